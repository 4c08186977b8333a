"""Reading the conversation: language detection and follow-up questions expanded into search queries."""

from __future__ import annotations

import pytest

from assistant.conversation import build_search_query, is_follow_up
from index.textja import detect_language


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("料金プランを変更したい", "ja"),
        ("ｵﾍﾟﾚｰﾀｰ", "ja"),  # half-width katakana
        ("eSIMの設定方法", "ja"),  # mixed, with Japanese
        ("How do I set up eSIM?", "en"),
        ("ＨＥＬＬＯ", "en"),  # full-width Latin
    ],
)
def test_detect_language(text: str, expected: str) -> None:
    assert detect_language(text) == expected


def test_detect_language_falls_back_when_the_text_has_no_letters() -> None:
    assert detect_language("？？", default="en") == "en"
    assert detect_language("12345", default="ja") == "ja"


@pytest.mark.parametrize(
    "text",
    [
        "それはいくらですか",
        "その場合は？",
        "じゃあ解約金は？",
        "how much is it?",
        "What about eSIM?",
        "ありがとう",
    ],
)
def test_short_questions_that_point_back_are_follow_ups(text: str) -> None:
    assert is_follow_up(text)


@pytest.mark.parametrize(
    "text",
    [
        "料金プランを変更したい",
        "解約したい",
        "海外で使えますか",
        "Can I use my phone abroad?",
        "それと、SIMカードが届いてから開通手続きをするまでに何日くらい待てばいいのか教えてもらえますか",
        "",
    ],
)
def test_questions_that_stand_on_their_own_are_not_follow_ups(text: str) -> None:
    assert not is_follow_up(text)


def test_a_follow_up_is_searched_with_the_previous_question() -> None:
    history = [("customer", "海外ローミングの設定方法を教えて"), ("bot", "設定 > モバイル通信 から…")]
    query = build_search_query(history, "それはいくらですか")
    assert query.expanded
    assert query.text == "海外ローミングの設定方法を教えて それはいくらですか"
    assert query.context == ("海外ローミングの設定方法を教えて",)


def test_chained_follow_ups_reach_back_to_the_question_that_named_the_topic() -> None:
    history = [
        ("customer", "How do I set up roaming?"),
        ("bot", "Open Settings..."),
        ("customer", "and how much is it?"),
        ("bot", "It costs..."),
        ("operator", "Anything else?"),
    ]
    query = build_search_query(history, "what about data?")
    assert query.context == ("How do I set up roaming?", "and how much is it?")
    assert query.text.endswith("what about data?")


def test_the_last_answer_topic_is_added_when_known() -> None:
    query = build_search_query([("customer", "それは？")], "いくら？", last_topic="海外ローミングの料金")
    assert query.context == ("海外ローミングの料金", "それは？")


def test_a_new_topic_or_an_empty_history_is_searched_as_it_is() -> None:
    history = [("customer", "海外ローミングの設定方法を教えて")]
    assert build_search_query(history, "解約したい").text == "解約したい"
    alone = build_search_query([], "それはいくらですか")
    assert (alone.text, alone.expanded) == ("それはいくらですか", False)
    only_bot = build_search_query([("bot", "こんにちは")], "  それは？ ")
    assert only_bot.text == "それは？"
