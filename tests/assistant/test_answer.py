"""Extractive answers: sentence-boundary trimming (Japanese and English) and citations."""

from __future__ import annotations

import pytest

from assistant.answer import (
    citations_for,
    clarification,
    extractive_answer,
    handoff_message,
    passage_text,
    trim_to_sentences,
)
from index.documents import Chunk, SearchHit


def faq(answer: str, cid: str = "faq:plan-change") -> Chunk:
    return Chunk(
        id=cid, source_id=cid.removeprefix("faq:"), kind="faq", title="料金プランを変更したい",
        heading_path=("plans",), text="料金プランを変更したい\n" + answer, url="https://example.jp/faq/1",
        language="ja", content_hash="h", question="料金プランを変更したい", answer=answer,
    )


def manual(text: str) -> Chunk:
    return Chunk(
        id="manual-esim#abc-0", source_id="manual-esim", kind="manual", title="eSIM Guide",
        heading_path=("eSIM Guide", "Setup"), text=text, url=None, language="en", content_hash="h",
    )


def hit(chunk: Chunk) -> SearchHit:
    return SearchHit(chunk=chunk, score=0.03, rank=1)


JA = "料金プランはマイページから変更できます。変更は翌月1日から適用されます！当月中の変更は何回でも可能です？"
EN = "You can change your plan on My Page. Changes apply from the 1st of next month. Fees are 3.5 USD."


def test_short_text_is_kept_whole() -> None:
    assert trim_to_sentences(JA, 200) == (JA, False)


@pytest.mark.parametrize(
    ("text", "budget", "expected"),
    [
        (JA, 40, "料金プランはマイページから変更できます。変更は翌月1日から適用されます！"),
        (JA, 25, "料金プランはマイページから変更できます。"),
        (EN, 90, "You can change your plan on My Page. Changes apply from the 1st of next month."),
        # "3.5" is not a sentence end.
        (EN, len(EN) - 1, "You can change your plan on My Page. Changes apply from the 1st of next month."),
        ("「はい」と答えてください。次に進みます。", 14, "「はい」と答えてください。"),
        ("手順:\n1. 設定を開く\n2. 再起動する", 12, "手順:\n1. 設定を開く"),
    ],
)
def test_trims_at_the_last_sentence_end_within_budget(text: str, budget: int, expected: str) -> None:
    trimmed, cut = trim_to_sentences(text, budget)
    assert (trimmed, cut) == (expected, True)
    assert len(trimmed) <= budget


def test_a_single_overlong_sentence_is_cut_with_an_ellipsis() -> None:
    ja, cut = trim_to_sentences("あ" * 50, 10)
    assert (ja, cut) == ("あ" * 9 + "…", True)
    en, _ = trim_to_sentences("word " * 30, 22)
    assert en == "word word word word…"
    with pytest.raises(ValueError, match="0"):
        trim_to_sentences(JA, 0)


def test_extractive_answer_uses_the_faq_answer_and_cites_the_entry() -> None:
    answer = extractive_answer(hit(faq(JA)), max_chars=40)
    assert answer.text == "料金プランはマイページから変更できます。変更は翌月1日から適用されます！"
    assert answer.truncated
    (citation,) = answer.citations
    assert (citation.number, citation.title, citation.url) == (1, "料金プランを変更したい", "https://example.jp/faq/1")
    assert (citation.chunk_id, citation.source_id) == ("faq:plan-change", "plan-change")


def test_extractive_answer_from_a_manual_passage_cites_its_heading_path() -> None:
    answer = extractive_answer(hit(manual(EN)))
    assert answer.text == EN and not answer.truncated
    assert answer.citations[0].title == "eSIM Guide > Setup"
    assert passage_text(manual("  padded  ")) == "padded"


def test_clarification_lists_the_candidates_with_numbered_citations() -> None:
    hits = [hit(faq("a", "faq:plan-change")), hit(manual(EN))]
    ja = clarification(hits, "ja")
    assert ja.text.splitlines()[1:] == ["1. 料金プランを変更したい", "2. eSIM Guide > Setup"]
    assert [c.number for c in ja.citations] == [1, 2]
    assert clarification(hits, "en").text.startswith("Which of these")
    assert citations_for(hits) == ja.citations


def test_handoff_messages_exist_in_both_languages() -> None:
    assert "担当者" in handoff_message("escalate", "ja")
    assert "kept your message" in handoff_message("take_message", "en")
