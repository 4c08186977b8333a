"""Answer metrics with ragas: its non-LLM metrics offline, and its LLM-judged ones given a judge model.

Non-LLM (no model, no network):
- ``string_similarity``: ragas ``NonLLMStringSimilarity`` (normalized Levenshtein over characters, so
  it needs no tokenizer: fine for Japanese) on NFKC-normalized text;
- ``chrf``: ragas ``CHRFScore`` (character n-grams, language-independent);
- ``bleu`` and ``rouge_l``: ragas ``BleuScore`` and ``RougeScore`` (ROUGE-L F1) over content-word terms
  (``index.textja.terms``: Sudachi normal forms for Japanese, stemmed words for English). ragas' BLEU
  needs whitespace tokens and its ROUGE keeps only ``[a-z0-9]`` (Japanese would vanish), so every term
  of a pair is written as an ASCII id (``w0``, ``w1``...) shared by the two texts: the scores are those
  of the term sequences;
- ``context_recall`` and ``context_precision``: ragas ``NonLLMContextRecall`` and
  ``NonLLMContextPrecisionWithReference`` (retrieved passages against the gold passages, by string
  similarity). They compare *whole* strings, so they suit gold passages of the retrieved kind (an FAQ
  entry) and read 0.0 when the gold is a short span inside long passages (doc2dial);
- ``grounding_recall``, ``grounding_recall_at_1`` and ``response_grounding_recall``: containment, not
  similarity: the share of the gold passages' content-word terms (``index.textja.terms``, counted with
  repeats) found in all the retrieved passages, in the top passage alone, and in the response. A gold
  span quoted inside a 1,200-character passage scores 1.0.

Which context metrics run is chosen by ``context_metrics`` (``"ragas"``, ``"grounding"``).

LLM-judged (``JudgeConfig``: any litellm model string): ragas ``Faithfulness``, ``AnswerRelevancy``
(with our own embedder), ``ContextPrecision`` and ``ContextRecall``, through ragas' litellm adapter
(instructor in JSON mode over ``litellm.acompletion``, so any litellm provider can judge, including one
registered in ``litellm.custom_provider_map``: that is how the tests run ragas' real prompts offline).
"""

from __future__ import annotations

import asyncio
import logging
import math
import unicodedata
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from index.embed import Embedder
from index.textja import terms

log = logging.getLogger(__name__)
CONTEXT_METRICS = {
    "ragas": ("context_recall", "context_precision"),
    "grounding": ("grounding_recall", "grounding_recall_at_1", "response_grounding_recall"),
}
NON_LLM_METRICS = (
    "string_similarity",
    "chrf",
    "bleu",
    "rouge_l",
    *(m for v in CONTEXT_METRICS.values() for m in v),
)
JUDGE_METRICS = ("faithfulness", "answer_relevancy", "llm_context_precision", "llm_context_recall")


@dataclass(frozen=True)
class AnswerExample:
    """A reply to score: the question, the reply, the reference answer, retrieved and gold passages."""

    question: str
    response: str
    reference: str
    retrieved_contexts: tuple[str, ...] = ()
    reference_contexts: tuple[str, ...] = ()


@dataclass(frozen=True)
class JudgeConfig:
    """A judge model reached through litellm (``openai/gpt-4o-mini``, ``ollama/llama3``, ...)."""

    model: str
    api_base: str | None = None
    api_key: str | None = field(default=None, repr=False)
    timeout: float = 60.0


def encoded_terms(*texts: str) -> list[str]:
    """Each text's content-word terms as space-separated ASCII ids, one vocabulary for all the texts."""
    vocab: dict[str, str] = {}
    return [" ".join(vocab.setdefault(t, f"w{len(vocab)}") for t in terms(x)) for x in texts]


def term_recall(gold: str, found: Sequence[str]) -> float:
    """Share of the gold text's content-word terms (with repeats) that the found texts hold together.

    nan when the gold text has no content word. Japanese is tokenized by Sudachi, English stemmed.
    """
    wanted = Counter(terms(gold))
    if not wanted:
        return math.nan
    have = Counter(t for text in found for t in terms(text))
    return sum((wanted & have).values()) / sum(wanted.values())


def grounding_scores(
    reference_contexts: Sequence[str], retrieved_contexts: Sequence[str], response: str = ""
) -> dict[str, float]:
    """Containment of the gold passages in the retrieved passages (all, top one) and in the response."""
    gold = "\n".join(reference_contexts)
    scores = {
        "grounding_recall": term_recall(gold, retrieved_contexts),
        "grounding_recall_at_1": term_recall(gold, retrieved_contexts[:1]),
    }
    if response:
        scores["response_grounding_recall"] = term_recall(gold, [response])
    return {k: v for k, v in scores.items() if math.isfinite(v)}


def _nfkc(text: str) -> str:
    return unicodedata.normalize("NFKC", text).strip()


class NonLLMScorer:
    """The non-LLM metrics, built once (ragas metric objects are reusable).

    ``context_metrics``: which passage metrics to compute (keys of ``CONTEXT_METRICS``).
    """

    def __init__(self, context_metrics: Sequence[str] = ("ragas", "grounding")) -> None:
        unknown = set(context_metrics) - set(CONTEXT_METRICS)
        if unknown:
            raise ValueError(
                f"unknown context metrics {sorted(unknown)!r}; choose from {list(CONTEXT_METRICS)}"
            )
        self.context_metrics = tuple(context_metrics)
        with warnings.catch_warnings():  # ragas marks its legacy single-turn metrics deprecated
            warnings.simplefilter("ignore", DeprecationWarning)
            from ragas.metrics import NonLLMContextPrecisionWithReference, NonLLMContextRecall
        from ragas.metrics.collections import BleuScore, CHRFScore, NonLLMStringSimilarity, RougeScore

        self._similarity = NonLLMStringSimilarity()
        self._chrf = CHRFScore()
        self._bleu = BleuScore()
        self._rouge = RougeScore(rouge_type="rougeL", mode="fmeasure")
        self._context_recall = NonLLMContextRecall()
        self._context_precision = NonLLMContextPrecisionWithReference()

    def score(self, example: AnswerExample) -> dict[str, float]:
        """The non-LLM metrics of one example (context metrics only when both passage lists are given)."""
        response, reference = _nfkc(example.response), _nfkc(example.reference)
        out: dict[str, float] = {}
        if reference:
            ref_terms, resp_terms = encoded_terms(reference, response)
            out["string_similarity"] = self._value(self._similarity, reference=reference, response=response)
            out["chrf"] = self._value(self._chrf, reference=reference, response=response)
            both = bool(ref_terms and resp_terms)  # a text without content words scores 0
            terms_pair = {"reference": ref_terms, "response": resp_terms}
            out["bleu"] = self._value(self._bleu, **terms_pair) if both else 0.0
            out["rouge_l"] = self._value(self._rouge, **terms_pair) if both else 0.0
        if not (example.retrieved_contexts and example.reference_contexts):
            return out
        if "grounding" in self.context_metrics:
            out.update(grounding_scores(example.reference_contexts, example.retrieved_contexts, response))
        if "ragas" in self.context_metrics:
            from ragas import SingleTurnSample

            sample = SingleTurnSample(
                retrieved_contexts=[_nfkc(c) for c in example.retrieved_contexts],
                reference_contexts=[_nfkc(c) for c in example.reference_contexts],
            )
            out["context_recall"] = float(self._context_recall.single_turn_score(sample))
            out["context_precision"] = float(self._context_precision.single_turn_score(sample))
        return out

    @staticmethod
    def _value(metric: Any, **kwargs: str) -> float:
        return float(metric.score(**kwargs).value)


def ragas_embeddings(embedder: Embedder) -> Any:
    """Our embedder behind ragas' embedding interface (answer relevancy compares question embeddings)."""
    from ragas.embeddings.base import BaseRagasEmbedding

    class EmbedderForRagas(BaseRagasEmbedding):
        def embed_text(self, text: str, **kwargs: Any) -> list[float]:
            return [float(v) for v in embedder.embed_queries([text])[0]]

        async def aembed_text(self, text: str, **kwargs: Any) -> list[float]:
            return self.embed_text(text)

    return EmbedderForRagas()


class JudgeScorer:
    """ragas' LLM-judged metrics with a judge model called through litellm."""

    def __init__(self, judge: JudgeConfig, embedder: Embedder) -> None:
        import instructor
        import litellm
        from ragas.llms.litellm_llm import LiteLLMStructuredLLM
        from ragas.metrics.collections import AnswerRelevancy, ContextPrecision, ContextRecall, Faithfulness

        client = instructor.from_litellm(litellm.acompletion, mode=instructor.Mode.JSON)
        extra: dict[str, Any] = {"timeout": judge.timeout}
        if judge.api_base:
            extra["api_base"] = judge.api_base
        if judge.api_key:
            extra["api_key"] = judge.api_key
        llm = LiteLLMStructuredLLM(client=client, model=judge.model, provider="litellm", **extra)
        self._faithfulness = Faithfulness(llm=llm)
        self._relevancy = AnswerRelevancy(llm=llm, embeddings=ragas_embeddings(embedder), strictness=1)
        self._precision = ContextPrecision(llm=llm)
        self._recall = ContextRecall(llm=llm)

    def score(self, example: AnswerExample) -> dict[str, float]:
        """The judged metrics of one example (the ones its fields allow)."""
        return asyncio.run(self._ascore(example))

    async def _ascore(self, e: AnswerExample) -> dict[str, float]:
        contexts = list(e.retrieved_contexts)
        out: dict[str, float] = {}
        if contexts and e.response:
            out["faithfulness"] = (
                await self._faithfulness.ascore(
                    user_input=e.question, response=e.response, retrieved_contexts=contexts
                )
            ).value
        if e.response:
            relevancy = await self._relevancy.ascore(user_input=e.question, response=e.response)
            out["answer_relevancy"] = relevancy.value
        if contexts and e.reference:
            out["llm_context_precision"] = (
                await self._precision.ascore(
                    user_input=e.question, reference=e.reference, retrieved_contexts=contexts
                )
            ).value
            out["llm_context_recall"] = (
                await self._recall.ascore(
                    user_input=e.question, retrieved_contexts=contexts, reference=e.reference
                )
            ).value
        return {k: float(v) for k, v in out.items()}


def score_answers(
    examples: Sequence[AnswerExample],
    *,
    judge: JudgeScorer | None = None,
    context_metrics: Sequence[str] = ("ragas", "grounding"),
) -> tuple[list[dict[str, float]], dict[str, float]]:
    """Per-example scores and their means (nan-free means over the examples that have each metric).

    A judge failure on one example is logged and leaves that example without judged metrics.
    """
    scorer = NonLLMScorer(context_metrics)
    rows: list[dict[str, float]] = []
    for e in examples:
        row = scorer.score(e)
        if judge is not None:
            try:
                row.update(judge.score(e))
            except Exception:  # a judge outage must not end the evaluation: log and go on
                log.exception("judge model failed on %r", e.question[:60])
        rows.append(row)
    return rows, mean_scores(rows)


def mean_scores(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """The mean of each metric over the rows that have a finite value for it."""
    names = dict.fromkeys(k for r in rows for k in r)
    out = {}
    for name in names:
        values = [r[name] for r in rows if name in r and math.isfinite(r[name])]
        if values:
            out[name] = sum(values) / len(values)
    return out
