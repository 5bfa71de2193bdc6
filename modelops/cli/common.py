"""What every command does at its entry: quiet, readable output; the config options; one-line errors.

- Known third-party noise is filtered (odc-geo's PendingDeprecationWarning on `*` for matrix products, MLflow's
  type-hint UserWarning, …) and Ray Data's progress bars are off (a job's output is read in logs, where a
  redrawn bar becomes hundreds of lines); the jobs print `shard k/N … ETA` and `step k/N … ETA` lines instead.
- `--config`, `--set key.sub=value` and `--print-config` (the resolved config with every default, as YAML).
- A `ConfigError` is printed as `invalid config:` plus one line per problem, exit 2; never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import warnings
from typing import Any, TypeVar

from pipeline.config import ConfigError, load_config, to_yaml

__all__ = ["EXIT_CONFIG", "EXIT_FAILED", "add_config_args", "connect_ray", "fail", "load_or_exit", "quiet",
           "quiet_env", "quiet_ray_data", "worker_env"]

T = TypeVar("T")
EXIT_FAILED, EXIT_CONFIG = 1, 2
_NOISE = (  # (category, module regex, message regex): warnings users cannot act on
    (PendingDeprecationWarning, r"odc\.geo", ""),
    (DeprecationWarning, r"(odc|pystac_client|botocore|google|pkg_resources|ray)(\.|$)", ""),
    (UserWarning, r"mlflow", r".*(type hint|Type hint|type annotation)"),
    (FutureWarning, r"(xarray|dask|odc|mlflow)(\.|$)", ""),
)

# MLflow shows its type-hint UserWarnings under its own `simplefilter("once")` (mlflow.utils.annotations), which
# takes precedence over the filter above; once routed to logging (`logging.captureWarnings`, done by
# `pipeline.logs.install_redaction`), the record is dropped here. Every other warning is logged.
_MLFLOW_TYPE_HINT = re.compile(r"[/\\]mlflow[/\\].*UserWarning: .*(type hint|type annotation)", re.IGNORECASE)


class _DropKnownWarnings(logging.Filter):
    """Drops `py.warnings` records of the MLflow type-hint warnings (the pyfunc's dict input has no schema)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not _MLFLOW_TYPE_HINT.search(record.getMessage())


def quiet(level: int = logging.INFO) -> None:
    """Logging as `time level name: message`, noisy libraries at WARNING, known warnings filtered (also for
    the processes this one starts, through PYTHONWARNINGS), Ray Data progress bars off."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("botocore", "aiobotocore", "s3fs", "urllib3", "fsspec", "rasterio", "ray.data", "ray.train",
                  "ray.tune", "alembic", "mlflow", "numexpr"):  # fmt: skip
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for category, module, message in _NOISE:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    py_warnings = logging.getLogger("py.warnings")
    if not any(isinstance(f, _DropKnownWarnings) for f in py_warnings.filters):
        py_warnings.addFilter(_DropKnownWarnings())
    extra = ["ignore::PendingDeprecationWarning", "ignore::FutureWarning"]
    os.environ["PYTHONWARNINGS"] = ",".join([*filter(None, os.environ.get("PYTHONWARNINGS", "").split(",")), *extra])
    quiet_env()


def quiet_env() -> None:
    """The variables that keep third-party output short: progress bars off, MLflow at WARNING and without its
    "View run" URL lines, Ray's log prefixes without colour codes (set before those libraries are imported)."""
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")  # read when ray.data is first imported
    os.environ.setdefault("TQDM_DISABLE", "1")  # third-party tqdm bars (ours are log lines)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # MLflow sets its loggers' level at import
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # "View run …" twice; run_id: summary
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # `(Worker pid=…)` prefixes without ANSI colour codes in logs


# Set for the job's Ray workers and actors (Ray Train's controller, Ray Data's coordinators), which do not inherit
# this process's environment: Ray Data's INFO lines (an execution plan and a "finished" line per epoch) and a
# deprecation Ray's own Ray Train code triggers are off; their warnings and errors still print.
_WORKER_ENV = {
    "RAY_DATA_LOG_LEVEL": "WARNING",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    "TQDM_DISABLE": "1",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "RAY_COLOR_PREFIX": "0",
    "PYTHONWARNINGS": "ignore::DeprecationWarning:ray.data._internal.execution.interfaces.execution_options,"
                      "ignore::PendingDeprecationWarning,ignore::FutureWarning",
}


def worker_env() -> dict[str, str]:
    """The variables given to the job's Ray workers (`runtime_env={"env_vars": …}`); a value set in this
    process's environment wins."""
    own = {key: os.environ[key] for key in _WORKER_ENV if key in os.environ and key != "PYTHONWARNINGS"}
    return dict(_WORKER_ENV) | own


def connect_ray() -> None:
    """Connect to the Ray cluster of RAY_ADDRESS (a dashboard URL is replaced by RAY_GCS_ADDRESS, the cluster
    address `ray.init` needs), or start a local one; the workers get `worker_env()`, the driver logs warnings only
    (no "Connecting to existing Ray cluster" banner)."""
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS", "")
    if address.startswith("http"):  # a dashboard URL (for `ray job submit`) is not a cluster address
        address = os.environ.get("RAY_GCS_ADDRESS", "")
        os.environ["RAY_ADDRESS"] = address
    if not address:  # a Ray of this job alone, on this machine, is never preempted (see infra/local/services.py)
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    ray.init(address=address or "local", runtime_env={"env_vars": worker_env()}, logging_level=logging.WARNING,
             log_to_driver=True)  # fmt: skip


def quiet_ray_data() -> None:
    """Ray Data's progress bars and per-dataset stats logs off in this process (call before datasets run)."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    ctx.enable_rich_progress_bars = False
    ctx.enable_auto_log_stats = False
    ctx.verbose_stats_logs = False
    ctx.print_on_execution_start = False


def add_config_args(parser: argparse.ArgumentParser, example: str) -> None:
    """`--config`, `--set` and `--print-config`."""
    parser.add_argument("--config", required=True, help=f"YAML file, e.g. {example}")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one key, e.g. --set chips_per_shard=4 --set sensors.0.max_dates=2")  # fmt: skip
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config with every default (YAML) and exit")  # fmt: skip


def config_epilog(cls: type) -> str:
    """The `--help` text listing the config's top-level keys and where every key is described."""
    import dataclasses

    keys = ", ".join(f.name for f in dataclasses.fields(cls))
    return (f"config keys ({cls.__name__}): {keys}. Every key with its type, default and meaning: docs/CONFIG.md,"
            " or --print-config for the resolved values.")  # fmt: skip


def fail(prefix: str, err: BaseException | str, code: int = EXIT_FAILED) -> int:
    """Print `prefix: message` (one line per line of the message) on stderr and return `code`."""
    print(f"{prefix}: {err}", file=sys.stderr)
    return code


def load_or_exit(cls: type[T], args: argparse.Namespace) -> T | int:
    """The validated config, or the exit status after printing why not (2) or the config (`--print-config`, 0)."""
    try:
        config = load_config(cls, args.config, args.overrides)
    except ConfigError as err:
        text = str(err)
        return fail("invalid config", f"\n  {text.replace(chr(10), chr(10) + '  ')}" if "\n" in text else text,
                    EXIT_CONFIG)  # fmt: skip
    if args.print_config:
        print(to_yaml(config), end="")
        return 0
    return config


def is_status(value: Any) -> bool:
    """True when `load_or_exit` returned an exit status rather than a config."""
    return isinstance(value, int) and not isinstance(value, bool)
