"""Experiment tracking of a training run on MLflow that never stops training: unreachable → a warning, no-op.

`Tracker` talks to one MLflow server through `MlflowClient` (mlflow is imported only when a tracker is made);
jobs use it from rank 0 only. Requests get a short timeout and no retries, so a server that is down costs
seconds, not minutes: the first failure logs one clear warning ("MLflow unreachable at …, training goes on
without tracking") and every later call is skipped. `flatten` turns a nested config into parameters;
`write_loss_curve` draws the loss history as a PNG (matplotlib's Agg canvas, no display needed).
"""

from __future__ import annotations

import logging
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["Tracker", "bound_mlflow", "flatten", "mlflow_problem", "write_loss_curve"]

log = logging.getLogger(__name__)
T = TypeVar("T")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """`{"optim": {"lr": 1e-3}}` → `{"optim.lr": "0.001"}` (lists are kept as their string form)."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out |= flatten(value, f"{name}.")
        else:
            out[name] = str(value)
    return out


def bound_mlflow(timeout_s: float = 5.0, max_retries: int = 0) -> None:
    """Bound every MLflow HTTP request of this process (MLflow's defaults retry for minutes on a dead server)."""
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(int(max(timeout_s, 1)))
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(max_retries)


def mlflow_problem(uri: str | None, *, timeout_s: float = 5.0) -> str:
    """Why the MLflow server at `uri` cannot be used ('' when its /health answers 200), in one line.

    A missing URI is a problem too: MLflow would otherwise fall back to a local `mlflow.db` in the working
    directory, which a job never creates unless asked. Also bounds this process's MLflow requests.
    """
    if not uri:
        return "no MLflow server: set MLFLOW_TRACKING_URI or pass --tracking-uri (no local mlflow.db is created)"
    bound_mlflow(timeout_s)
    if not uri.startswith(("http://", "https://")):
        return ""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s) as resp:  # noqa: S310
            return "" if resp.status == 200 else f"MLflow at {uri} answered HTTP {resp.status} on /health"
    except (urllib.error.URLError, OSError) as err:
        return f"MLflow at {uri} is not reachable: {getattr(err, 'reason', err)}"


class Tracker:
    """One MLflow run, or nothing when MLflow is off or unreachable (training goes on either way).

    Args:
        uri: Tracking URI (`http://host:port`, …); empty or None disables tracking.
        experiment: Experiment name (created if missing).
        run_id: Continue this run instead of creating one (e.g. a training worker logging into the driver's run).
        timeout_s: Per-request timeout; also set as MLFLOW_HTTP_REQUEST_TIMEOUT for this process.
        max_retries: Request retries; also set as MLFLOW_HTTP_REQUEST_MAX_RETRIES for this process.
    """

    def __init__(self, uri: str | None, *, experiment: str = "anysat-pretrain", run_id: str | None = None,
                 timeout_s: float = 5.0, max_retries: int = 0) -> None:  # fmt: skip
        self.uri = uri or ""
        self.experiment = experiment
        self.run_id = run_id
        self.disabled_reason = "" if self.uri else "no tracking URI given"
        self._client: Any = None
        if not self.uri:
            return
        bound_mlflow(timeout_s, max_retries)
        if self.uri.startswith(("http://", "https://")) and not self._healthy(timeout_s):
            return
        from mlflow.tracking import MlflowClient

        self._client = MlflowClient(tracking_uri=self.uri)

    @property
    def active(self) -> bool:
        """True while calls reach MLflow."""
        return self._client is not None and not self.disabled_reason

    def _healthy(self, timeout_s: float) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri.rstrip('/')}/health", timeout=timeout_s) as resp:  # noqa: S310
                if resp.status == 200:
                    return True
                reason = f"health check answered HTTP {resp.status}"
        except (urllib.error.URLError, OSError) as err:
            reason = str(getattr(err, "reason", err))
        self._disable(reason)
        return False

    def _disable(self, reason: str) -> None:
        self.disabled_reason = reason
        log.warning("MLflow unreachable at %s (%s); training goes on without tracking", self.uri, reason)

    def _call(self, what: str, fn: Callable[[], T]) -> T | None:
        if not self.active:
            return None
        from mlflow.exceptions import MlflowException
        from requests.exceptions import RequestException

        try:
            return fn()
        except (MlflowException, RequestException, OSError) as err:
            self._disable(f"{what} failed: {str(err).splitlines()[0][:300]}")
            return None

    def start(self, *, run_name: str = "", tags: Mapping[str, str] | None = None) -> str | None:
        """Create the run (or keep `run_id`); returns its id, or None when tracking is off."""
        if self.run_id is not None:
            return self.run_id

        def create() -> str:
            exp = self._client.get_experiment_by_name(self.experiment)
            exp_id = exp.experiment_id if exp is not None else self._client.create_experiment(self.experiment)
            run = self._client.create_run(exp_id, run_name=run_name or None, tags=dict(tags or {}))
            return str(run.info.run_id)

        self.run_id = self._call("creating the run", create)
        return self.run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Parameters (values as strings, cut to MLflow's 6000 characters), 100 per request."""
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self._call("logging parameters", lambda c=items[i : i + 100]: self._client.log_batch(self.run_id, params=c))

    def log_metrics(self, metrics: Mapping[str, float], *, step: int) -> None:
        """Metrics of one step."""
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = [Metric(k, float(v), ts, step) for k, v in metrics.items()]
        self._call("logging metrics", lambda: self._client.log_batch(self.run_id, metrics=batch))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for k, v in tags.items():
            self._call("setting a tag", lambda k=k, v=v: self._client.set_tag(self.run_id, k, v))

    def log_artifact(self, path: str | Path, *, artifact_path: str | None = None) -> None:
        """Upload one local file or directory to the run's artifacts."""
        self._call("uploading an artifact", lambda: self._client.log_artifact(self.run_id, str(path), artifact_path))

    def end(self, status: str = "FINISHED") -> None:
        """Close the run (`FINISHED`, `FAILED` or `KILLED`)."""
        self._call("ending the run", lambda: self._client.set_terminated(self.run_id, status))


def write_loss_curve(history: Sequence[Sequence[float]], path: str | Path) -> Path:
    """PNG of the loss and its parts over steps from `TrainState.history` rows `[step, loss, pred, nce]`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    steps = [row[0] for row in history]
    for col, label in ((1, "loss"), (2, "loss_pred"), (3, "loss_nce")):
        ax.plot(steps, [row[col] for row in history], label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("JEPA pretraining")
    ax.legend()
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    return out
