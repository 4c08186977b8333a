"""ragas' non-LLM answer metrics offline, with Japanese scored over Sudachi terms."""

from __future__ import annotations

import math

import pytest

from eval.metrics.answers import (
    AnswerExample,
    NonLLMScorer,
    encoded_terms,
    grounding_scores,
    mean_scores,
    score_answers,
    term_recall,
)


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


# --- containment of the gold grounding text (doc2dial: a short span inside long passages) -------------

DMV = "Driver license renewal happens at the DMV office. Bring your old license."
FEE = "Pay the fee online by card."


def test_grounding_recall_counts_gold_terms_found_in_the_passages() -> None:
    # Gold terms: renew, driver, license, online. DMV holds driver, license ("renewal" stems apart
    # from "renew"); FEE adds online. The response holds renew, online.
    scores = grounding_scores(["You can renew your driver license online."], [DMV, FEE], "Renew it online.")
    assert scores == {
        "grounding_recall": pytest.approx(3 / 4),
        "grounding_recall_at_1": pytest.approx(2 / 4),
        "response_grounding_recall": pytest.approx(2 / 4),
    }
    # Repeated gold terms need as many occurrences, across the passages together.
    assert term_recall("license. license.", ["license"]) == pytest.approx(1 / 2)
    assert term_recall("license. license.", ["license", "license"]) == pytest.approx(1.0)
    assert math.isnan(term_recall("the and of", [DMV]))  # no content word: undefined, left out
    assert grounding_scores(["the and of"], [DMV]) == {}


def test_grounding_recall_tokenizes_japanese() -> None:
    # Gold: sim, カード, 届く, 開通, 手続き; the passage has all but 届く (it says 到着).
    gold = "SIMカードが届いたら開通手続きをしてください。"
    passage = "開通手続きはMy SoraMobileから行います。SIMカードの到着後に。"
    assert term_recall(gold, [passage]) == pytest.approx(4 / 5)


def test_a_span_inside_a_long_passage_is_found_where_ragas_string_metrics_see_nothing() -> None:
    span = "You can renew your driver license online."
    filler = " ".join(f"Section {i} explains fees, forms and office hours for owners." for i in range(16))
    passage = f"{filler} {span} {filler}"
    assert len(passage) > 1_000
    example = AnswerExample("How do I renew?", "Renew it online.", span, (passage, FEE), (span,))
    both = NonLLMScorer().score(example)
    assert both["context_recall"] == 0.0  # whole-string similarity of a 40-char span to ~2,300 chars
    assert both["grounding_recall"] == 1.0 and both["grounding_recall_at_1"] == 1.0
    only = NonLLMScorer(["grounding"]).score(example)
    assert "context_recall" not in only and "context_precision" not in only
    assert only["grounding_recall"] == 1.0
    with pytest.raises(ValueError, match="'bleu'"):
        NonLLMScorer(["bleu"])
