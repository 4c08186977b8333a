"""ragas' non-LLM answer metrics offline, with Japanese scored over Sudachi terms."""

from __future__ import annotations

import pytest

from eval.metrics.answers import AnswerExample, NonLLMScorer, encoded_terms, mean_scores, score_answers


def test_terms_share_one_ascii_vocabulary() -> None:
    ref, resp = encoded_terms(
        "SIMカードが届いたら開通手続きをしてください", "開通手続きはSIMカードが届いてからです"
    )
    assert ref.isascii() and resp.isascii()
    assert sorted(ref.split()) == sorted(resp.split())  # the same content words, in another order
    assert ref != resp


def test_japanese_rouge_and_bleu_are_computed_over_terms() -> None:
    scorer = NonLLMScorer()
    same = scorer.score(
        AnswerExample(
            "q", "開通手続きはMy SoraMobileから行います。", "開通手続きはMy SoraMobileから行います。"
        )
    )
    for name in ("string_similarity", "chrf", "bleu", "rouge_l"):
        assert same[name] == pytest.approx(1.0), name
    # Five shared terms; the longest common subsequence keeps three: ROUGE-L F1 = 3/5.
    moved = scorer.score(
        AnswerExample(
            "q", "開通手続きはSIMカードが届いてからです。", "SIMカードが届いたら開通手続きをしてください。"
        )
    )
    assert moved["rouge_l"] == pytest.approx(0.6)
    assert 0.0 < moved["bleu"] < 1.0 and 0.0 < moved["string_similarity"] < 1.0
    unrelated = scorer.score(AnswerExample("q", "天気は晴れです", "解約金は0円です"))
    assert unrelated["rouge_l"] == 0.0 and unrelated["bleu"] == 0.0


def test_context_metrics_need_both_passage_lists() -> None:
    scorer = NonLLMScorer()
    gold = "Pay at a convenience store or by bank transfer."
    found = scorer.score(AnswerExample("q", "x", gold, (gold, "Unrelated text about dogs."), (gold,)))
    assert found["context_recall"] == 1.0 and found["context_precision"] == pytest.approx(1.0)
    missed = scorer.score(AnswerExample("q", "x", gold, ("Unrelated text about dogs.",), (gold,)))
    assert missed["context_recall"] == 0.0
    assert "context_recall" not in scorer.score(AnswerExample("q", "x", gold))


def test_means_skip_missing_metrics() -> None:
    rows, means = score_answers([AnswerExample("q", "a b c", "a b c"), AnswerExample("q", "x", "")])
    assert rows[1] == {} and means["rouge_l"] == pytest.approx(1.0)
    assert mean_scores([{"a": 1.0}, {"a": float("nan"), "b": 0.0}]) == {"a": 1.0, "b": 0.0}
