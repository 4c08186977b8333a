"""ragas' LLM-judged metrics (``JudgeScorer``) through litellm's own provider seam, offline.

The judge is a ``CustomLLM`` registered in ``litellm.custom_provider_map``: ragas renders its real
prompts, instructor asks for JSON through ``litellm.acompletion``, our provider answers by a rule the
test can follow by hand (a statement is supported when the context contains it), and ragas computes
its scores from those answers. Answer relevancy embeds with the product's default embedder.
"""

from __future__ import annotations

import json
import re
from typing import Any

import litellm
import numpy as np
import pytest
from litellm import CustomLLM
from litellm.types.utils import ModelResponse

from eval.metrics.answers import AnswerExample, JudgeConfig, JudgeScorer, score_answers

# What the judge "generates" as the question behind a response (ragas' answer relevancy).
GENERATED_QUESTIONS = {
    "You can pay at a convenience store. Card payments are accepted.": "How can I pay my bill?",
}


def _statements(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.。])\s*", text) if s.strip()]


def _supported(statement: str, context: str) -> bool:
    return statement.rstrip(".。").lower() in context.lower()


class RuleJudge(CustomLLM):  # type: ignore[misc]
    """A judge model that answers ragas' prompts by substring rules, and keeps every prompt it got."""

    def __init__(self) -> None:
        super().__init__()
        self.prompts: list[str] = []

    def _answer(self, prompt: str) -> dict[str, Any]:
        self.prompts.append(prompt)
        data = json.loads(prompt.rsplit("input: ", 1)[1].rsplit("Output:", 1)[0])
        if '"title": "StatementGeneratorOutput"' in prompt:
            return {"statements": _statements(data["answer"])}
        if '"title": "NLIStatementOutput"' in prompt:
            verdicts = [
                {"statement": s, "reason": "rule", "verdict": int(_supported(s, data["context"]))}
                for s in data["statements"]
            ]
            return {"statements": verdicts}
        if '"title": "AnswerRelevanceOutput"' in prompt:
            noncommittal = "i don't know" in data["response"].lower()
            question = GENERATED_QUESTIONS.get(data["response"], "What was asked?")
            return {"question": question, "noncommittal": int(noncommittal)}
        if '"title": "ContextPrecisionOutput"' in prompt:  # useful: holds the answer's first statement
            return {
                "reason": "rule",
                "verdict": int(_supported(_statements(data["answer"])[0], data["context"])),
            }
        if '"title": "ContextRecallOutput"' in prompt:
            return {
                "classifications": [
                    {"statement": s, "reason": "rule", "attributed": int(_supported(s, data["context"]))}
                    for s in _statements(data["answer"])
                ]
            }
        raise AssertionError(f"a prompt the judge does not know: {prompt[:200]}")

    def _reply(self, messages: list[dict[str, Any]]) -> ModelResponse:
        prompt = next(m["content"] for m in messages if m["role"] == "user")
        content = json.dumps(self._answer(prompt))
        return ModelResponse(choices=[{"message": {"role": "assistant", "content": content}}])

    def completion(
        self, model: str, messages: list[dict[str, Any]], *args: Any, **kwargs: Any
    ) -> ModelResponse:
        return self._reply(messages)

    async def acompletion(
        self, model: str, messages: list[dict[str, Any]], *args: Any, **kwargs: Any
    ) -> ModelResponse:
        return self._reply(messages)


@pytest.fixture
def judge(monkeypatch: pytest.MonkeyPatch) -> RuleJudge:
    provider = RuleJudge()
    monkeypatch.setattr(
        litellm, "custom_provider_map", [{"provider": "rulejudge", "custom_handler": provider}]
    )
    return provider


PAYMENT = AnswerExample(
    question="How do I pay my bill?",
    response="You can pay at a convenience store. Card payments are accepted.",
    reference="You can pay at a convenience store. Bank transfers take three days.",
    retrieved_contexts=(
        "Our shop sells phone cases.",
        "You can pay at a convenience store or online.",
    ),
)


def test_judged_metrics_run_ragas_through_a_litellm_provider(judge: RuleJudge, embedder) -> None:  # type: ignore[no-untyped-def]
    scores = JudgeScorer(JudgeConfig("rulejudge/judge", timeout=5), embedder).score(PAYMENT)

    # Faithfulness: two statements in the response, the contexts hold one of them.
    assert scores["faithfulness"] == pytest.approx(1 / 2)
    # Context precision (with reference): verdicts [0, 1] over the ranked contexts -> (1/2 * 1) / 1.
    assert scores["llm_context_precision"] == pytest.approx(1 / 2)
    # Context recall: two reference statements, one attributable to the contexts.
    assert scores["llm_context_recall"] == pytest.approx(1 / 2)
    # Answer relevancy: cosine between the question and the judge's generated question (one, strictness 1).
    asked, generated = embedder.embed_queries([PAYMENT.question, GENERATED_QUESTIONS[PAYMENT.response]])
    cosine = float(np.dot(asked, generated) / (np.linalg.norm(asked) * np.linalg.norm(generated)))
    assert scores["answer_relevancy"] == pytest.approx(cosine, abs=1e-5)
    assert 0.0 < cosine < 0.9999  # a different question: strictly below a perfect score

    # The prompts the judge saw are ragas' own, carrying our example's text.
    assert len(judge.prompts) == 2 + 1 + 2 + 1  # statements + NLI, relevancy, 2 contexts, recall
    assert any(PAYMENT.response in p for p in judge.prompts)


def test_a_noncommittal_reply_scores_zero_relevancy(judge: RuleJudge, embedder) -> None:  # type: ignore[no-untyped-def]
    evasive = AnswerExample("How do I pay my bill?", "I don't know.", "")
    scores = JudgeScorer(JudgeConfig("rulejudge/judge"), embedder).score(evasive)
    # The judge generated a question but called the reply noncommittal: ragas zeroes the cosine.
    assert scores == {"answer_relevancy": 0.0}  # no contexts, no reference: only relevancy applies
    assert '"response": "I don\'t know."' in judge.prompts[-1]


def test_a_judge_failure_leaves_the_example_with_its_offline_metrics(embedder) -> None:  # type: ignore[no-untyped-def]
    # No provider is registered under this name: litellm refuses the call, the example keeps its
    # non-LLM scores and the evaluation goes on.
    scorer = JudgeScorer(JudgeConfig("unregisteredjudge/judge", timeout=1), embedder)
    rows, means = score_answers([PAYMENT], judge=scorer)
    assert "faithfulness" not in rows[0] and "answer_relevancy" not in rows[0]
    assert 0.0 < rows[0]["chrf"] < 1.0 and means["chrf"] == rows[0]["chrf"]
