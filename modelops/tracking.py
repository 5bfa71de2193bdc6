"""Experiment tracking of a training run on MLflow that never stops training, and survives an outage of the server.

`Tracker` talks to one MLflow server through `MlflowClient` (mlflow is imported only when a tracker is made);
jobs use it from rank 0 only. Requests get a short timeout and no retries, so a server that is down costs
seconds, not minutes. A server unreachable before the run exists turns tracking off for the whole run (one
warning: "MLflow unreachable at …, training goes on without tracking"). A server that goes away once the run
exists is an outage: one warning, the metric, parameter and tag calls made meanwhile are kept in order, the
server's `/health` is asked again at most every `probe_every_s`, and when it answers the kept calls are sent
(one warning saying how many, for which steps). `wait_for_return` waits a bounded time (`return_wait_s`) for
that at the end of training; what is still unsent then is reported (`unsent_steps`), never retried for ever. `flatten` turns a nested config into parameters;
`write_loss_curve` draws the loss history as a PNG (matplotlib's Agg canvas, no display needed).
"""

from __future__ import annotations

import logging
import os
import time
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
        probe_every_s: During an outage, seconds between two health checks.
        return_wait_s: Longest wait for the server to come back in `wait_for_return`.
    """

    def __init__(self, uri: str | None, *, experiment: str = "anysat-pretrain", run_id: str | None = None,
                 timeout_s: float = 5.0, max_retries: int = 0, probe_every_s: float = 2.0,
                 return_wait_s: float = 90.0) -> None:  # fmt: skip
        self.uri = uri or ""
        self.experiment = experiment
        self.run_id = run_id
        self.disabled_reason = "" if self.uri else "no tracking URI given"
        self.probe_every_s, self.return_wait_s = probe_every_s, return_wait_s
        self.outage = ""  # why the server is unreachable now ('' while it answers)
        self.outages = 0
        self._pending: list[tuple[str, Callable[[], Any], int | None]] = []  # (what, call, step) kept in an outage
        self._next_probe = 0.0
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
        return self._client is not None and not self.disabled_reason and not self.outage

    @property
    def unsent_steps(self) -> list[int]:
        """Steps whose metrics are kept, not yet sent (an outage not over)."""
        return sorted({step for _, _, step in self._pending if step is not None})

    def _probe(self, timeout_s: float) -> str:
        """'' when the server's /health answers 200, else why not."""
        if not self.uri.startswith(("http://", "https://")):
            return ""
        try:
            with urllib.request.urlopen(f"{self.uri.rstrip('/')}/health", timeout=timeout_s) as resp:  # noqa: S310
                return "" if resp.status == 200 else f"health check answered HTTP {resp.status}"
        except (urllib.error.URLError, OSError) as err:
            return str(getattr(err, "reason", err))

    def _healthy(self, timeout_s: float) -> bool:
        reason = self._probe(timeout_s)
        if reason:
            self._disable(reason)
        return not reason

    def _disable(self, reason: str) -> None:
        self.disabled_reason = reason
        log.warning("MLflow unreachable at %s (%s); training goes on without tracking", self.uri, reason)

    def _call(self, what: str, fn: Callable[[], T], *, keep: bool = False, step: int | None = None) -> T | None:
        """`fn()` on the server; in an outage (or when it fails now) None, and `fn` kept for later if `keep`."""
        if self._client is None or self.disabled_reason:
            return None
        if self.outage and not self._back():
            if keep:
                self._pending.append((what, fn, step))
            return None
        from mlflow.exceptions import MlflowException
        from requests.exceptions import RequestException

        try:
            return fn()
        except (MlflowException, RequestException, OSError) as err:
            reason = f"{what} failed: {str(err).splitlines()[0][:300]}"
            if self.run_id is None:  # no run to come back to: off for good
                self._disable(reason)
                return None
            self._lost(reason)
            if keep:
                self._pending.append((what, fn, step))
            return None

    def _lost(self, reason: str) -> None:
        self.outage, self.outages = reason, self.outages + 1
        self._next_probe = time.monotonic() + self.probe_every_s
        log.warning("MLflow unreachable at %s (%s); training goes on, its metrics are kept and sent when the server "
                    "is back", self.uri, reason)  # fmt: skip

    def _back(self, *, now: bool = False) -> bool:
        """Whether the outage is over: ask /health (at most every `probe_every_s` unless `now`), then send the
        kept calls in order. A call failing again starts a new outage with the rest still kept."""
        if not now and time.monotonic() < self._next_probe:
            return False
        self._next_probe = time.monotonic() + self.probe_every_s
        if self._probe(min(2.0, self.probe_every_s)):
            return False
        from mlflow.exceptions import MlflowException
        from requests.exceptions import RequestException

        kept, steps, self._pending, self.outage = self._pending, self.unsent_steps, [], ""
        for i, (what, fn, _) in enumerate(kept):
            try:
                fn()
            except (MlflowException, RequestException, OSError) as err:
                self._pending = kept[i:]
                self._lost(f"{what} failed again: {str(err).splitlines()[0][:300]}")
                return False
        log.warning("MLflow is back at %s: %d kept call(s) sent%s", self.uri, len(kept),
                    f" (metrics of steps {steps[0]}-{steps[-1]})" if steps else "")  # fmt: skip
        return True

    def wait_for_return(self, timeout_s: float | None = None, *, check: bool = False) -> bool:
        """In an outage, wait up to `timeout_s` (default `return_wait_s`) for the server and send what was kept;
        True when nothing is left unsent. Outside an outage: True at once (with `check`, after asking /health)."""
        if self._client is None or self.disabled_reason:
            return False
        if check and not self.outage:
            reason = self._probe(min(2.0, self.probe_every_s))
            if reason:
                self._lost(reason)
        if not self.outage:
            return True
        wait = self.return_wait_s if timeout_s is None else timeout_s
        log.warning("waiting up to %.0f s for MLflow at %s to come back (%d call(s) kept)", wait, self.uri,
                    len(self._pending))  # fmt: skip
        deadline = time.monotonic() + wait
        while not self._back(now=True):
            left = deadline - time.monotonic()
            if left <= 0:
                steps = self.unsent_steps
                log.warning("MLflow still unreachable at %s after %.0f s: %d call(s) not logged%s", self.uri, wait,
                            len(self._pending), f" (metrics of steps {steps[0]}-{steps[-1]})" if steps else "")
                return False
            time.sleep(min(self.probe_every_s, left))
        return True

    def logged_steps(self, metric: str = "loss") -> set[int] | None:
        """Steps at which the run has `metric` on the server (None when that cannot be asked now)."""
        history = self._call(f"reading {metric}", lambda: self._client.get_metric_history(self.run_id, metric))
        return None if history is None else {int(m.step) for m in history}

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
            self._call("logging parameters", lambda c=items[i : i + 100]: self._client.log_batch(self.run_id, params=c),
                       keep=True)  # fmt: skip

    def log_metrics(self, metrics: Mapping[str, float], *, step: int) -> None:
        """Metrics of one step."""
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = [Metric(k, float(v), ts, step) for k, v in metrics.items()]
        self._call("logging metrics", lambda: self._client.log_batch(self.run_id, metrics=batch), keep=True, step=step)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for k, v in tags.items():
            self._call("setting a tag", lambda k=k, v=v: self._client.set_tag(self.run_id, k, v), keep=True)

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
