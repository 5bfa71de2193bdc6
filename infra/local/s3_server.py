"""The local S3 server with its objects on disk: moto's S3 app, written through to a folder and restored from it.

moto keeps buckets and objects in memory only, so `make stack-down` and `up` used to lose every store, checkpoint
and registered model artifact (the registry's database, on disk, then listed models whose files were gone).
moto 5.2.5 has no persistence mode (its request recorder appends every request, reads included, and replays
them all, which grows without bound). This server runs moto's own WSGI app and, after every request that
changed a bucket (PUT, POST or DELETE answered 2xx), writes the object it stored (a PUT or POST naming a key
moto now holds) or else that bucket's changed objects, and removes the deleted ones (compared by ETag, size and
modification time, under one lock, reading moto's current value inside it, so the last write of a key always
leaves its latest value on disk). At start every stored bucket and object is put back into moto
(same bytes, ETag, metadata and modification time) before the port opens.

Layout of the folder: `buckets.json` (name -> region) and, per object, `objects/<sha256(bucket, key)>.bin` (the
bytes) beside `.json` (bucket, key, ETag, size, modification time, metadata); each file written to a temporary
name and renamed. Versioned buckets keep their latest version only.

    python -m infra.local.s3_server --host 127.0.0.1 --port 9000 --data-dir .stack/s3
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = ["PersistentS3", "main"]

log = logging.getLogger(__name__)
_MUTATING = ("PUT", "POST", "DELETE")


def _write(path: Path, blob: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(blob)
    tmp.replace(path)


class PersistentS3:
    """moto's S3 backend mirrored into a folder (see the module docstring)."""

    def __init__(self, data_dir: Path) -> None:
        from moto.core.models import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends

        self.dir = data_dir
        self.objects = data_dir / "objects"
        self.objects.mkdir(parents=True, exist_ok=True)
        self.backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
        self.lock = threading.Lock()
        self.known: dict[str, dict[str, tuple[str, int, str]]] = {}  # bucket -> key -> (etag, size, modified)
        self.regions: dict[str, str] = {}

    @staticmethod
    def _name(bucket: str, key: str) -> str:
        return hashlib.sha256(f"{bucket}\0{key}".encode()).hexdigest()

    @staticmethod
    def _signature(obj: Any) -> tuple[str, int, str]:
        return (str(obj.etag), int(obj.size), obj.last_modified.isoformat())

    def restore(self) -> int:
        """Put every stored bucket and object back into moto; returns the number of objects."""
        buckets = self.dir / "buckets.json"
        self.regions = json.loads(buckets.read_text()) if buckets.exists() else {}
        for name, region in self.regions.items():
            self.backend.create_bucket(name, region)
            self.known[name] = {}
        count = 0
        for meta_file in sorted(self.objects.glob("*.json")):
            meta = json.loads(meta_file.read_text())
            blob = meta_file.with_suffix(".bin")
            if meta["bucket"] not in self.regions or not blob.exists():
                continue
            obj = self.backend.put_object(meta["bucket"], meta["key"], blob.read_bytes(),
                                          etag=meta["etag"].strip('"'), disable_notification=True)  # fmt: skip
            obj.set_metadata(dict(meta["metadata"]), replace=True)
            obj.last_modified = datetime.fromisoformat(meta["modified"])
            self.known[meta["bucket"]][meta["key"]] = self._signature(obj)
            count += 1
        return count

    def _current(self, bucket: Any) -> dict[str, Any]:
        from moto.s3.models import FakeKey

        for _ in range(5):  # moto's handlers may change the dict meanwhile: take a consistent copy
            try:
                return {name: obj for name, obj in list(bucket.keys.items()) if isinstance(obj, FakeKey)}
            except RuntimeError:
                continue
        return {name: obj for name, obj in list(bucket.keys.items()) if isinstance(obj, FakeKey)}

    def _sync_key(self, bucket_name: str, key: str) -> bool:
        """Write one object that a PUT/POST just stored; False when moto holds no such key (then diff the bucket)."""
        from moto.s3.models import FakeKey

        with self.lock:  # moto's current value, read under the lock: a later write's sync cannot be overtaken
            bucket = self.backend.buckets.get(bucket_name)
            obj = bucket.keys.get(key) if bucket is not None and bucket_name in self.regions else None
            if not isinstance(obj, FakeKey):
                return False
            self._store(bucket_name, key, obj)
        return True

    def _store(self, name: str, key: str, obj: Any) -> None:
        held = self.known.setdefault(name, {})
        sig = self._signature(obj)
        if held.get(key) == sig:
            return
        base = self.objects / self._name(name, key)
        _write(base.with_suffix(".bin"), obj.value)
        meta = {"bucket": name, "key": key, "etag": sig[0], "size": sig[1], "modified": sig[2],
                "metadata": dict(obj.metadata)}  # fmt: skip
        _write(base.with_suffix(".json"), json.dumps(meta).encode())
        held[key] = sig

    def sync(self, names: Iterable[str] | None = None) -> None:
        """Write the changed objects of these buckets (None: every bucket) and drop the deleted ones."""
        with self.lock:
            wanted = set(self.backend.buckets) | set(self.regions) if names is None else set(names)
            for name in wanted:
                bucket = self.backend.buckets.get(name)
                held = self.known.setdefault(name, {})
                now = self._current(bucket) if bucket is not None else {}
                for key in [k for k in held if k not in now]:
                    for suffix in (".json", ".bin"):
                        (self.objects / f"{self._name(name, key)}{suffix}").unlink(missing_ok=True)
                    del held[key]
                for key, obj in now.items():
                    self._store(name, key, obj)
                if bucket is None:
                    self.known.pop(name, None)
                    self.regions.pop(name, None)
                else:
                    self.regions[name] = bucket.region_name
            _write(self.dir / "buckets.json", json.dumps(self.regions, sort_keys=True).encode())

    def wrap(self, app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
        """The WSGI app that syncs the bucket a successful mutating request named (path-style URLs)."""

        def persisted(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            if environ.get("REQUEST_METHOD") not in _MUTATING:
                return app(environ, start_response)
            status: list[int] = []

            def recording(code: str, headers: Any, *rest: Any) -> Any:
                status.append(int(code.split()[0]))
                return start_response(code, headers, *rest)

            body = list(app(environ, recording))  # moto handles the request here, synchronously
            if status and status[0] < 300:
                first, _, key = environ.get("PATH_INFO", "/").lstrip("/").partition("/")
                if first == "moto-api":
                    return body
                try:  # WSGI paths are latin-1 strings of the request's bytes
                    key = key.encode("latin-1").decode("utf-8")
                except UnicodeError:
                    key = ""
                one = environ["REQUEST_METHOD"] != "DELETE" and "delete" not in environ.get("QUERY_STRING", "")
                if not (one and key and self._sync_key(first, key)):
                    self.sync([first] if first else None)
            return body

        return persisted


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data-dir", type=Path, required=True, help="folder holding the objects")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    os.environ.setdefault("MOTO_PORT", str(args.port))
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import run_simple

    app = DomainDispatcherApplication(create_backend_app)
    store = PersistentS3(args.data_dir)
    log.info("restored %d objects from %s", store.restore(), args.data_dir)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    run_simple(args.host, args.port, store.wrap(app), threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
