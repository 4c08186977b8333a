"""Run a suite: replay every example through the assistant's own turn, then measure.

The replay is the API's code path without HTTP and database: ``Responder.from_settings`` builds the
responder the server would build (confidence model, escalation policy, chat model from the settings),
and each example becomes a ``TurnInput`` answered by ``Responder.respond``. A failing example is
recorded with its error and left out of the metrics; it never ends the run.

``run_suite`` returns a ``SuiteRun`` (per-example results, metrics, parameters); ``suite_record``
turns it into the MLflow run ``eval.track.log_run`` writes.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from assistant.answer import passage_text
from assistant.conversation import build_search_query
from assistant.escalate import Availability
from assistant.respond import Reply, Responder, TurnInput
from assistant.settings import Settings
from assistant.suggest import Suggester
from eval.datasets import BuiltDataset
from eval.knowledge import build_knowledge_index
from eval.metrics.answers import AnswerExample, JudgeScorer, score_answers
from eval.metrics.e2e import latency_percentiles
from eval.metrics.escalation import (
    calibration_bins,
    escalation_reasons,
    escalation_summary,
    risk_coverage_curve,
)
from eval.metrics.retrieval import retrieval_report
from eval.plots import calibration_figure, risk_coverage_figure
from eval.suite import DEFAULT_DATA_DIR, SuiteConfig, build_suite_dataset, suite_knowledge
from eval.track import RunRecord, git_commit
from index.embed import Embedder
from index.search import KnowledgeIndex

log = logging.getLogger(__name__)
HANDOFFS = ("escalate", "take_message")
PASSAGES = 3  # retrieved passages given to the answer metrics
PREWARM_BATCH = 256


@dataclass(frozen=True)
class ExampleResult:
    """What the assistant did with one example, and whether it was right."""

    id: str
    question: str
    should_escalate: bool
    expected_reason: str
    decision: str = ""
    confidence: float = 0.0
    reasons: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()  # retrieved source ids, best first, without repeats
    correct_top: bool = False  # the top hit's source is one the example expects
    text: str = ""
    passages: tuple[str, ...] = ()
    suggestions: tuple[str, ...] = ()  # the operator's suggested replies (``answers: suggestion``)
    latency_ms: float = 0.0
    error: str | None = None
    answer_scores: Mapping[str, float] = field(default_factory=dict)

    @property
    def answered(self) -> bool:
        """The bot answered (the customer got the bot's answer, not a hand-off or a question)."""
        return self.decision == "answer"

    @property
    def escalated(self) -> bool:
        """The conversation went to people (now or as a message for later)."""
        return self.decision in HANDOFFS

    def row(self) -> dict[str, Any]:
        """A flat row for the per-example table."""
        out = asdict(self)
        out.pop("passages")
        out["suggestions"] = list(self.suggestions)
        out.pop("answer_scores")
        out["top_source"] = self.sources[0] if self.sources else None
        out["sources"] = list(self.sources[:10])
        out["reasons"] = list(self.reasons)
        out.update({f"answer_{k}": v for k, v in self.answer_scores.items()})
        return out


@dataclass(frozen=True)
class SuiteRun:
    """One execution of a suite."""

    suite: SuiteConfig
    dataset: BuiltDataset
    results: tuple[ExampleResult, ...]
    metrics: dict[str, float]
    params: dict[str, object]
    seconds: float


def turn_for(row: Mapping[str, Any], suite: SuiteConfig) -> TurnInput:
    """The ``TurnInput`` an example replays as (see ``SuiteConfig.query``)."""
    history = tuple((h["role"], h["text"]) for h in row["history"])
    message = row["question"]
    if suite.query == "last_turn":
        history = ()
    elif suite.query == "history":
        message = " ".join([*(t for _, t in history), message])
        history = ()
    return TurnInput(
        history=history,
        message=message,
        now=suite.now,
        locale=row["language"] or "ja",
        availability=Availability(on_shift=suite.on_shift, queue_length=0, queue_capacity=20),
    )


def _sources(index: KnowledgeIndex, chunk_ids: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Source ids (without repeats) and passage texts of the reply's hits, best first."""
    sources: list[str] = []
    passages: list[str] = []
    for cid in chunk_ids:
        chunk = index.chunk(cid)
        if chunk is None:
            continue
        if len(passages) < PASSAGES:
            passages.append(passage_text(chunk))
        if chunk.source_id not in sources:
            sources.append(chunk.source_id)
    return tuple(sources), tuple(passages)


def replay_one(
    responder: Responder, row: Mapping[str, Any], suite: SuiteConfig, suggester: Suggester | None = None
) -> ExampleResult:
    """Answer one example as the API would, timing the turn (and draft the operator's suggestions)."""
    turn = turn_for(row, suite)
    started = time.perf_counter()
    reply: Reply = responder.respond(turn)
    latency = (time.perf_counter() - started) * 1000
    sources, passages = _sources(responder.index, reply.hit_ids)
    expected = set(row["expected_sources"])
    drafts = suggester.drafts(turn.history, turn.message, turn.locale) if suggester is not None else ()
    return ExampleResult(
        id=row["id"],
        question=row["question"],
        should_escalate=row["should_escalate"],
        expected_reason=row["expected_reason"],
        decision=reply.decision,
        confidence=reply.confidence,
        reasons=reply.reasons,
        sources=sources,
        correct_top=bool(sources) and sources[0] in expected,
        text=reply.text,
        passages=passages,
        suggestions=tuple(d.text for d in drafts),
        latency_ms=latency,
    )


def replay(
    responder: Responder,
    rows: Sequence[Mapping[str, Any]],
    suite: SuiteConfig,
    *,
    suggester: Suggester | None = None,
    progress: bool = True,
) -> list[ExampleResult]:
    """Replay every example; a failure is logged and recorded, and the run goes on."""
    out = []
    for row in tqdm(rows, desc=f"replay {suite.name}", disable=not progress, unit="turn"):
        try:
            out.append(replay_one(responder, row, suite, suggester))
        except Exception as exc:  # one broken example must not end the run: record it, log it
            log.exception("example %s failed", row.get("id"))
            out.append(
                ExampleResult(
                    id=str(row.get("id")),
                    question=str(row.get("question")),
                    should_escalate=bool(row.get("should_escalate")),
                    expected_reason=str(row.get("expected_reason") or ""),
                    error=f"{type(exc).__name__}: {exc}",
                )
            )
    return out


def _retrieval_metrics(
    results: Sequence[ExampleResult], rows: Sequence[Mapping[str, Any]], ks: Sequence[int]
) -> dict[str, float]:
    qrels = {
        r["id"]: dict(zip(r["expected_sources"], r["expected_grades"], strict=True))
        for r in rows
        if r["expected_sources"]
    }
    ok = {res.id: list(res.sources) for res in results if res.error is None and res.id in qrels}
    if not ok:
        return {}
    out: dict[str, float] = {}
    for k in ks:
        out.update(retrieval_report(ok, {q: qrels[q] for q in ok}, k))
    out["retrieval_queries"] = out.pop("queries")
    return out


def _escalation_metrics(results: Sequence[ExampleResult], target: float) -> dict[str, float]:
    conf = np.array([r.confidence for r in results])
    correct = np.array([r.correct_top and not r.should_escalate for r in results])
    answered = np.array([r.answered for r in results])
    should = np.array([r.should_escalate for r in results])
    escalated = np.array([r.escalated for r in results])
    out = escalation_summary(
        conf, correct, answered, should_escalate=should, escalated=escalated, target_precision=target
    )
    if (~should).any():
        out["answerable_coverage"] = float(answered[~should].mean())
        out["answerable_answered_right"] = float((answered & correct)[~should].mean())
    expected = (
        [r.expected_reason or None for r in results] if any(r.expected_reason for r in results) else None
    )
    by_reason = escalation_reasons([r.reasons for r in results], list(escalated), list(should), expected)
    for reason, stats in by_reason.items():
        out[f"reason/{reason}/count"] = float(stats.count)
        out[f"reason/{reason}/precision"] = stats.precision
        if stats.recall is not None:
            out[f"reason/{reason}/recall"] = stats.recall
    return out


def _reference(row: Mapping[str, Any], index: KnowledgeIndex) -> tuple[str, tuple[str, ...]]:
    """The reference answer and passages: the row's own, else the expected FAQ entry's answer."""
    if row["reference_answer"]:
        return row["reference_answer"], tuple(row["reference_contexts"]) or (row["reference_answer"],)
    texts = [passage_text(c) for c in index.chunks if c.source_id in set(row["expected_sources"])]
    return (texts[0] if texts else ""), tuple(texts)


def _answer_examples(
    results: Sequence[ExampleResult], rows: Mapping[str, Mapping[str, Any]], index: KnowledgeIndex, mode: str
) -> list[tuple[int, AnswerExample]]:
    out = []
    for i, res in enumerate(results):
        row = rows[res.id]
        if res.error is not None or row["should_escalate"]:
            continue
        if mode == "reply" and not res.answered:
            continue
        reference, contexts = _reference(row, index)
        if mode == "reply":
            response = res.text
        else:  # the operator's first suggested reply, or the top passage
            drafts = res.suggestions if mode == "suggestion" else res.passages
            response = drafts[0] if drafts else ""
        if reference:
            out.append((i, AnswerExample(res.question, response, reference, res.passages, contexts)))
    return out


def compute_metrics(
    results: Sequence[ExampleResult],
    dataset: BuiltDataset,
    suite: SuiteConfig,
    index: KnowledgeIndex,
    seconds: float,
    judge: JudgeScorer | None = None,
) -> tuple[list[ExampleResult], dict[str, float]]:
    """All metrics of a replay (and the results with their answer scores attached)."""
    rows = {r["id"]: r for r in dataset.dataset.to_list()}
    ok = [r for r in results if r.error is None]
    metrics: dict[str, float] = {
        "examples": float(len(results)),
        "failures": float(len(results) - len(ok)),
        "examples_per_second": len(results) / seconds if seconds > 0 else float("nan"),
    }
    metrics.update(_retrieval_metrics(ok, [rows[r.id] for r in ok], suite.ks))
    if ok:
        metrics.update(_escalation_metrics(ok, suite.target_precision))
        metrics.update(
            {f"latency_ms_{k}": v for k, v in latency_percentiles([r.latency_ms for r in ok]).items()}
        )
    results = list(results)
    if suite.answers != "none":
        pairs = _answer_examples(results, rows, index, suite.answers)
        scores, means = score_answers(
            [e for _, e in pairs], judge=judge, context_metrics=suite.context_metrics
        )
        for (i, _), s in zip(pairs, scores, strict=True):
            results[i] = ExampleResult(**{**asdict(results[i]), "answer_scores": s})
        metrics.update({f"answer/{k}": v for k, v in means.items()})
        metrics["answer/examples"] = float(len(pairs))
    return results, metrics


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def run_params(
    suite: SuiteConfig, settings: Settings, responder: Responder, dataset: BuiltDataset
) -> dict[str, object]:
    """What the run depends on: embedder, index, prompts, LLM, thresholds, dataset, commit."""
    from assistant.confidence import DEFAULT_ARTIFACT

    model = responder.confidence_model
    artifact = settings.confidence_model or DEFAULT_ARTIFACT
    return {
        "suite": suite.name,
        "query": suite.query,
        "answers": suite.answers,
        "embedder": responder.index.embedder.name,
        "fusion": responder.index.fusion.describe(),
        "index_chunks": len(responder.index.chunks),
        "search_k": responder.search_k,
        "prompt_version": responder.prompts.version,
        "prompt_system": responder.prompts.system.version,
        "prompt_user": responder.prompts.user.version,
        "llm": settings.llm.model or "extractive",
        "confidence_artifact": str(artifact),
        "confidence_artifact_sha": _file_hash(artifact),
        "confidence_fitted_on": model.fitted_on[:500],
        "threshold": settings.escalation.answer_threshold
        if settings.escalation.answer_threshold is not None
        else model.threshold,
        "target_precision": suite.target_precision,
        "dataset": dataset.name,
        "dataset_fingerprint": dataset.fingerprint,
        "dataset_rows": len(dataset),
        "git_commit": git_commit(),
    }


def run_suite(
    suite: SuiteConfig,
    settings: Settings,
    embedder: Embedder,
    *,
    data_dir: Path = DEFAULT_DATA_DIR,
    sample: int | None = None,
    judge: JudgeScorer | None = None,
    dataset: BuiltDataset | None = None,
    prewarm: bool = True,
    progress: bool = True,
) -> SuiteRun:
    """Build the suite's dataset (unless given) and knowledge index, replay every example, and measure.

    ``prewarm``: embed every example's search query first, in batches, so that the turns read them
    from the embedding cache (one query at a time is ~10x slower on a busy CPU). The latencies then
    leave the query embedding out; pass False to time whole turns.
    """
    dataset = dataset or build_suite_dataset(suite, data_dir, sample)
    spec = suite_knowledge(suite, data_dir)
    index = build_knowledge_index(spec, embedder)
    index_search_k = max(suite.ks)
    responder = Responder.from_settings(settings, index)
    responder.search_k = max(responder.search_k, index_search_k)
    rows = dataset.dataset.to_list()
    if prewarm:
        queries = [build_search_query(t.history, t.message).text for t in (turn_for(r, suite) for r in rows)]
        for start in range(0, len(queries), PREWARM_BATCH):
            embedder.embed_queries(queries[start : start + PREWARM_BATCH])
    started = time.perf_counter()
    suggester = Suggester(index, responder.chat) if suite.answers == "suggestion" else None
    results = replay(responder, rows, suite, suggester=suggester, progress=progress)
    seconds = time.perf_counter() - started
    results, metrics = compute_metrics(results, dataset, suite, index, seconds, judge)
    params = run_params(suite, settings, responder, dataset) | {
        "knowledge": spec.describe(),
        "prewarm": prewarm,
    }
    return SuiteRun(suite, dataset, tuple(results), metrics, params, seconds)


def suite_record(run: SuiteRun, threshold: float | None = None) -> RunRecord:
    """The MLflow run of a suite execution: params, metrics, per-example table, the two plots."""
    ok = [r for r in run.results if r.error is None]
    conf = [r.confidence for r in ok]
    correct = [r.correct_top and not r.should_escalate for r in ok]
    figures = {}
    if ok:
        answered_share = float(np.mean([r.answered for r in ok]))
        figures["plots/risk_coverage.png"] = risk_coverage_figure(
            risk_coverage_curve(conf, correct), f"{run.suite.name}: risk vs coverage", answered_share
        )
        figures["plots/calibration.png"] = calibration_figure(
            calibration_bins(conf, correct), f"{run.suite.name}: calibration"
        )
    return RunRecord(
        name=run.suite.name,
        params=run.params,
        metrics=run.metrics,
        tags={"suite": run.suite.name, "dataset_fingerprint": run.dataset.fingerprint},
        table=[r.row() for r in run.results],
        figures=figures,
        files={"suite.json": run.suite.model_dump_json(indent=1)},
    )
