"""Where a pretraining run keeps its files: checkpoints and results under `run.storage/run.name/` (local or s3://).

Both training paths and the job's resume logic ask this module which checkpoint is the latest complete one,
which filesystem holds the run (pyarrow, with bounded retries on s3://), and write results there atomically.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anysat.train import read_state
from anysat.train.checkpoint import STATE_FILE, missing_files

if TYPE_CHECKING:
    from modelops.pretrain_config import PretrainConfig

__all__ = ["CKPT_PREFIX", "checkpoints", "existing_checkpoint", "local_checkpoint", "newer_checkpoint",
           "remove_stale_checkpoint", "storage_fs", "worker_scratch", "worker_scratch_path", "write_run_file"]

log = logging.getLogger("pretrain")
CKPT_PREFIX = "checkpoint_"

def checkpoints(run_dir: Path) -> list[Path]:
    """The checkpoint directories of a local run directory, oldest step first."""
    found = [p for p in run_dir.glob(f"{CKPT_PREFIX}*") if re.fullmatch(rf"{CKPT_PREFIX}\d+", p.name)]
    return sorted(found, key=lambda p: read_state(p)["state"]["step"])


def existing_checkpoint(cfg: PretrainConfig) -> str | None:
    """The run's latest complete checkpoint on its storage (local or s3://), or None.

    A checkpoint directory whose files do not match the sizes its `state.json` lists (an upload cut short by
    a killed worker or driver) is skipped with a warning, so `--resume` never starts from half a checkpoint.
    """
    from pyarrow import fs as pafs

    fs, path = storage_fs(cfg.run.storage)
    run_dir = f"{path.rstrip('/')}/{cfg.run.name}"
    infos = fs.get_file_info(pafs.FileSelector(run_dir, allow_not_found=True))
    names = sorted(i.base_name for i in infos if re.fullmatch(rf"{CKPT_PREFIX}\d+", i.base_name))
    for name in reversed(names):
        lacking = _lacking(fs, f"{run_dir}/{name}")
        if not lacking:
            return f"{run_dir}/{name}"
        log.warning("checkpoint %s/%s is incomplete (%s missing or cut short); resuming from an earlier one",
                    run_dir, name, ", ".join(lacking[:4]))  # fmt: skip
    return None


def newer_checkpoint(registered: str | None, found: str | None) -> str | None:
    """The checkpoint a Ray Train worker restores: the later step of `registered` (Ray's latest registered one,
    `ray.train.get_checkpoint()`) and `found` (the one `--resume` found, `existing_checkpoint`); Ray's on a tie.

    Ray Train reloads its checkpoint manager's snapshot from the run storage, so in a resumed run Ray's checkpoint
    is the killed driver's last *registered* one. Registration lags the upload (Ray collects every rank's report
    at its next health check), so a driver killed in between leaves a newer complete checkpoint than Ray names,
    and taking Ray's would silently redo those steps. Within a run, after a worker-group restart, Ray's is the
    newer one once this run has registered any. Steps come from the directory names (`checkpoint_<step>`).
    """
    if registered is None or found is None:
        return registered or found
    step = {p: int(m.group(1)) if (m := re.fullmatch(rf"{CKPT_PREFIX}(\d+)", p.rstrip("/").rsplit("/", 1)[-1])) else -1
            for p in (registered, found)}  # fmt: skip
    return found if step[found] > step[registered] else registered


def _lacking(fs: Any, checkpoint: str) -> list[str]:
    """The files a checkpoint copy on `fs` lacks against its `state.json` (`anysat.train.missing_files`)."""
    from pyarrow import fs as pafs

    found = fs.get_file_info(pafs.FileSelector(checkpoint, recursive=True))
    sizes = {i.path[len(checkpoint) + 1 :]: i.size for i in found if i.type == pafs.FileType.File}
    if STATE_FILE not in sizes:
        return [STATE_FILE]
    with fs.open_input_stream(f"{checkpoint}/{STATE_FILE}") as src:
        return missing_files(src.read(), sizes)


def storage_fs(storage: str) -> tuple[Any, str]:
    """A pyarrow filesystem and path for the run storage: a local path, or s3:// with AWS_ENDPOINT_URL if set.

    S3 requests retry transient failures `PYARROW_S3_ATTEMPTS` times (~25 s of backoff), so a checkpoint upload
    or download bridges a short outage of the object store.
    """
    from pyarrow import fs as pafs

    from pipeline.s3_retry import PYARROW_S3_ATTEMPTS

    if not storage.startswith("s3://"):
        return pafs.LocalFileSystem(), str(Path(storage).resolve())
    endpoint = os.environ.get("AWS_ENDPOINT_URL", "")
    scheme, _, host = endpoint.partition("://")
    kwargs = {"endpoint_override": host, "scheme": scheme} if endpoint else {}
    retries = pafs.AwsDefaultS3RetryStrategy(max_attempts=PYARROW_S3_ATTEMPTS)
    return pafs.S3FileSystem(retry_strategy=retries, **kwargs), storage.removeprefix("s3://")


@contextlib.contextmanager
def local_checkpoint(cfg: PretrainConfig, final: str | Path) -> Iterator[Path]:
    """The final checkpoint as a local directory: itself on local storage, a temporary download from s3."""
    if not cfg.run.storage.startswith("s3://"):
        yield Path(final)
        return
    from pyarrow import fs as pafs

    fs, _ = storage_fs(cfg.run.storage)
    with tempfile.TemporaryDirectory(prefix="anysat-final-") as tmp:
        pafs.copy_files(str(final), tmp, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        yield Path(tmp)


def write_run_file(cfg: PretrainConfig, name: str, data: bytes) -> str:
    """Write one result under `run.storage/run.name/` atomically (local: temporary file + rename; s3: one PUT)."""
    fs, root = storage_fs(cfg.run.storage)
    target = f"{root.rstrip('/')}/{cfg.run.name}/{name}"
    fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
    staging = f"{target}.tmp-{os.getpid()}" if not cfg.run.storage.startswith("s3://") else target
    with fs.open_output_stream(staging) as out:
        out.write(data)
    if staging != target:
        fs.move(staging, target)
    return target if not cfg.run.storage.startswith("s3://") else f"s3://{target}"


def worker_scratch_path(storage: str, name: str, rank: int) -> Path:
    """The scratch folder of one rank of one run (see `worker_scratch`), in the system's temp dir."""
    key = hashlib.sha256(f"{storage.rstrip('/')}/{name}".encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"anysat-worker-{key}-rank{rank}"


@contextlib.contextmanager
def worker_scratch(cfg: PretrainConfig, rank: int) -> Iterator[Path]:
    """A Ray Train worker's scratch folder for checkpoint copies (the restored one, each saved one before its
    upload), named by the run and the rank and emptied on entry and exit. A SIGKILLed worker cannot remove what
    it copied (up to a whole checkpoint, ~90 MB for the tiny model); a `TemporaryDirectory` would keep it in the
    temp dir for good, while here the next worker of the same rank of the run (Ray Train's restart, `--resume`)
    removes it."""
    path = worker_scratch_path(cfg.run.storage, cfg.run.name, rank)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def remove_stale_checkpoint(cfg: PretrainConfig, step: int) -> bool:
    """Remove the run's folder of `step`'s checkpoint if an earlier, killed attempt left one; True if it did.

    Called before a (restarted) run writes that step again: Ray Train copies a checkpoint into its folder file by
    file, so over a leftover a copy cut short would mix two attempts' files of the same sizes, which the size
    check of `existing_checkpoint` cannot tell from a complete copy. A restarted run only writes steps after the
    one it restored, so the folder is never a checkpoint Ray registered.
    """
    fs, root = storage_fs(cfg.run.storage)
    stale = f"{root.rstrip('/')}/{cfg.run.name}/{CKPT_PREFIX}{step:06d}"
    if fs.get_file_info(stale).type.name != "Directory":
        return False
    log.warning("removing %s, left by an earlier attempt, before writing it again", stale)
    fs.delete_dir(stale)
    return True
