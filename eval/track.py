"""MLflow tracking: the only module that imports mlflow.

One run per suite execution (``log_run``): parameters, metrics, a per-example table and PNG plots.
The default store is a SQLite file under the Madoguchi home (``sqlite:///<home>/mlflow.db``) with
the artifacts in ``<home>/mlartifacts`` beside it; any tracking URI (another SQLite file, an MLflow
server) can be given instead. A ``sqlite:///`` store always keeps its artifacts beside its file, never
in the working directory's ``./mlruns``.

Errors: ``RunNotFoundError`` (no run with that id in the store); ``TrackingError`` (the store cannot
be used: a bad URI, an unreachable server).
"""

from __future__ import annotations

import json
import logging
import math
import re
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

log = logging.getLogger(__name__)
DEFAULT_EXPERIMENT = "madoguchi-eval"
REPO = Path(__file__).resolve().parents[1]
_BAD_KEY_CHARS = re.compile(r"[^/\w.\- :]")
_MAX_PARAM_CHARS = 6000


class TrackingError(RuntimeError):
    """The tracking store cannot be used (bad URI, unreachable server, refused write)."""


class RunNotFoundError(LookupError):
    """No run with this id exists in the tracking store."""


@dataclass(frozen=True)
class TrackingConfig:
    """Where runs go: a tracking URI and an experiment name."""

    uri: str
    experiment: str = DEFAULT_EXPERIMENT

    @classmethod
    def default(cls, home: Path, experiment: str = DEFAULT_EXPERIMENT) -> TrackingConfig:
        """``sqlite:///<home>/mlflow.db`` (artifacts in ``<home>/mlartifacts``)."""
        return cls(sqlite_uri(home / "mlflow.db"), experiment)


def sqlite_uri(path: Path) -> str:
    """The SQLAlchemy URI of a SQLite file (absolute, so the store does not depend on the cwd)."""
    return f"sqlite:///{path.expanduser().resolve().as_posix()}"


def artifact_location(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside a SQLite file; the server's choice otherwise."""
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        return (db.parent / "mlartifacts").as_uri()
    return None


def metric_key(name: str) -> str:
    """A name MLflow accepts as a metric or parameter key (``recall@10`` -> ``recall_at_10``)."""
    return _BAD_KEY_CHARS.sub("_", name.replace("@", "_at_"))[:250]


def git_commit(repo: Path = REPO) -> str:
    """The checked-out commit, with ``+dirty`` when the work tree has changes; ``unknown`` outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


@dataclass(frozen=True)
class RunRecord:
    """Everything one suite execution logs."""

    name: str
    params: Mapping[str, object]
    metrics: Mapping[str, float]
    tags: Mapping[str, str] = field(default_factory=dict)
    table: Sequence[Mapping[str, object]] = ()  # one row per example
    figures: Mapping[str, Figure] = field(default_factory=dict)  # artifact path (.png) -> figure
    files: Mapping[str, str] = field(default_factory=dict)  # artifact path -> text content


def _client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri)


def _experiment_id(client: Any, config: TrackingConfig) -> str:
    found = client.get_experiment_by_name(config.experiment)
    if found is not None:
        return str(found.experiment_id)
    return str(client.create_experiment(config.experiment, artifact_location=artifact_location(config.uri)))


def _param_value(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text[:_MAX_PARAM_CHARS]


def _table_columns(rows: Sequence[Mapping[str, object]]) -> dict[str, list[object]]:
    """Rows as columns of scalars (lists and dicts as JSON text), every row having every column."""
    names = list(dict.fromkeys(k for r in rows for k in r))
    scalar = (str, int, float, bool, type(None))
    return {
        n: [
            r.get(n)
            if isinstance(r.get(n), scalar)
            else json.dumps(r.get(n), ensure_ascii=False, default=str)
            for r in rows
        ]
        for n in names
    }


def log_run(config: TrackingConfig, record: RunRecord) -> str:
    """Log one run and return its id; non-finite metrics are left out (and named in a tag)."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.exceptions import MlflowException

    try:
        client = _client(config.uri)
        run = client.create_run(_experiment_id(client, config), run_name=record.name)
    except MlflowException as exc:
        raise TrackingError(f"cannot open tracking store {config.uri}: {exc}") from exc
    run_id = str(run.info.run_id)
    now = int(time.time() * 1000)
    metrics = {metric_key(k): float(v) for k, v in record.metrics.items()}
    skipped = sorted(k for k, v in metrics.items() if not math.isfinite(v))
    tags = {**record.tags, **({"nonfinite_metrics": ",".join(skipped)} if skipped else {})}
    try:
        client.log_batch(
            run_id,
            metrics=[Metric(k, v, now, 0) for k, v in metrics.items() if math.isfinite(v)],
            params=[Param(metric_key(k), _param_value(v)) for k, v in record.params.items()],
            tags=[RunTag(k, str(v)) for k, v in tags.items()],
        )
        if record.table:
            client.log_table(run_id, data=_table_columns(record.table), artifact_file="examples.json")
        for path, figure in record.figures.items():
            client.log_figure(run_id, figure, path)
        for path, text in record.files.items():
            client.log_text(run_id, text, path)
    except Exception:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")
    log.info("logged MLflow run %s (%s) to %s", run_id, record.name, config.uri)
    return run_id


@dataclass(frozen=True)
class LoggedRun:
    """A run read back from the store."""

    run_id: str
    name: str
    metrics: dict[str, float]
    params: dict[str, str]
    tags: dict[str, str]
    artifact_uri: str


def get_run(uri: str, run_id: str) -> LoggedRun:
    """Read a run; ``RunNotFoundError`` when the store has none with this id."""
    from mlflow.exceptions import MlflowException

    client = _client(uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc.error_code) or "not found" in str(exc).lower():
            raise RunNotFoundError(f"no run {run_id!r} in the tracking store {uri}") from None
        raise TrackingError(f"cannot read run {run_id!r} from {uri}: {exc}") from exc
    return LoggedRun(
        run_id=run.info.run_id,
        name=run.info.run_name or "",
        metrics=dict(run.data.metrics),
        params=dict(run.data.params),
        tags=dict(run.data.tags),
        artifact_uri=str(run.info.artifact_uri),
    )


def list_artifacts(uri: str, run_id: str) -> list[str]:
    """The artifact paths of a run (files, recursively)."""
    client = _client(uri)
    out: list[str] = []
    pending = [""]
    while pending:
        for item in client.list_artifacts(run_id, pending.pop() or None):
            (pending if item.is_dir else out).append(item.path)
    return sorted(out)
