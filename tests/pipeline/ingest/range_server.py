"""A small HTTP file server with Range support that answers 503 to the first requests of chosen files.

Run as a script (a separate process: GDAL holds the GIL while it waits for HTTP answers, so a server thread
inside the reading process would deadlock):

    python range_server.py ROOT [--port=P] [--status=S] [--require-signature] [PATH=N ...]

It prints its port on the first line of stdout, then serves files under ROOT on 127.0.0.1. `PATH=N` answers 503
to the first N requests of PATH (`N = -1`: always); `--status=S` answers S (e.g. 403) to every request. Proxy
requests for any host (`GET http://host/PATH?…`, as GDAL sends them with `GDAL_HTTP_PROXY`) are served from ROOT
by their PATH: a loopback stand-in for a remote store. `--require-signature` answers 403 to a request for an
existing file whose query has no `sig=` (as Azure Blob Storage does without a SAS token). `GET /_requests`
returns the requests seen so far as JSON (`[method, path, status]`), so tests can check that retries (or signed
requests) reached the server.
"""

from __future__ import annotations

import http.server
import json
import re
import sys
import threading
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """GET/HEAD with single byte ranges; failure budget per path."""

    root: ClassVar[Path]
    status: ClassVar[int] = 0
    require_signature: ClassVar[bool] = False
    failures: ClassVar[dict[str, int]]
    seen: ClassVar[list[tuple[str, str, int]]]
    lock: ClassVar[threading.Lock] = threading.Lock()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        """Quiet: the test reads `/_requests` instead."""

    def _answer(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, *,
                send_body: bool = True) -> None:  # fmt: skip
        with self.lock:
            self.seen.append((self.command, self.path, status))
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def _serve(self, send_body: bool) -> None:
        if self.path == "/_requests":
            with self.lock:
                body = json.dumps(self.seen).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if self.status:
            self._answer(self.status, b"AuthenticationFailed: signature expired", send_body=send_body)
            return
        parts = urlsplit(self.path)  # "/PATH?query", or "http://host/PATH?query" when used as a proxy
        path = parts.path
        with self.lock:
            budget = self.failures.get(path, 0)
            if budget > 0:
                self.failures[path] = budget - 1
        if budget:
            self._answer(503, send_body=send_body)
            return
        file = (self.root / path.lstrip("/")).resolve()
        if not file.is_file() or self.root not in file.parents:
            self._answer(404, send_body=send_body)
            return
        if self.require_signature and "sig=" not in parts.query:
            self._answer(403, b"AuthenticationFailed: no signature", send_body=send_body)
            return
        data = file.read_bytes()
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
        if match is None:
            self._answer(200, data, {"Accept-Ranges": "bytes"}, send_body=send_body)
            return
        start = int(match.group(1))
        end = min(int(match.group(2) or len(data) - 1), len(data) - 1)
        self._answer(206, data[start : end + 1], {"Accept-Ranges": "bytes",
                                                   "Content-Range": f"bytes {start}-{end}/{len(data)}"},
                     send_body=send_body)  # fmt: skip

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self._serve(True)

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's name
        self._serve(False)


def main(argv: list[str]) -> None:
    root = Path(argv[0]).resolve()
    port = next((int(a.split("=", 1)[1]) for a in argv[1:] if a.startswith("--port=")), 0)
    status = next((int(a.split("=", 1)[1]) for a in argv[1:] if a.startswith("--status=")), 0)
    failures = {p: int(n) for p, n in (a.rsplit("=", 1) for a in argv[1:] if not a.startswith("--"))}
    handler = type("Handler", (RangeHandler,), {"root": root, "failures": failures, "seen": [], "status": status,
                                                "require_signature": "--require-signature" in argv[1:]})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
