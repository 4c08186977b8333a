"""The escalation policy: each trigger, the hours/capacity rules, and clarification."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from assistant.escalate import (
    Availability,
    BusinessHours,
    Candidate,
    EscalationConfig,
    EscalationPolicy,
    PhraseSet,
    Signals,
    contains_phrase,
    decide_escalation,
    normalize_text,
)

TOKYO = ZoneInfo("Asia/Tokyo")
OPEN = datetime(2025, 6, 4, 11, 0, tzinfo=TOKYO)  # a Wednesday morning
NIGHT = datetime(2025, 6, 4, 23, 0, tzinfo=TOKYO)
POLICY = EscalationPolicy(EscalationConfig(answer_threshold=0.7))


def signals(message: str = "料金プランを変更したい", confidence: float = 0.9, **kw: object) -> Signals:
    base = Signals(
        message=message,
        confidence=confidence,
        now=OPEN,
        candidates=(Candidate("faq-plan", 0.93, "plans"), Candidate("faq-sim", 0.88, "sim")),
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def test_confident_answer_without_triggers() -> None:
    d = POLICY.decide(signals())
    assert (d.decision, d.reasons, d.confidence) == ("answer", (), 0.9)
    assert not d.is_handoff


def test_low_confidence_escalates_when_operators_are_available() -> None:
    d = POLICY.decide(signals(confidence=0.2))
    assert d.decision == "escalate"
    assert d.reasons == ("low_confidence",)


@pytest.mark.parametrize(
    "message",
    [
        "オペレーターと話したい",
        "人と話したい",
        "担当者に代わってください",
        "ｵﾍﾟﾚｰﾀｰにつないで",  # half-width katakana, NFKC-normalized
        "I want to TALK TO A PERSON please",
        "Can I get a human agent?",
        "ＨＵＭＡＮ ＡＧＥＮＴ",  # full-width Latin
    ],
)
def test_explicit_request_for_a_human_escalates_even_when_confident(message: str) -> None:
    d = POLICY.decide(signals(message, confidence=0.99))
    assert d.decision == "escalate"
    assert d.reasons[0] == "human_requested"


@pytest.mark.parametrize(
    ("message", "topic"),
    [
        ("解約の方法を教えて", "cancellation"),
        ("I want to cancel my contract", "cancellation"),
        ("身に覚えのない請求があります", "fraud_security"),
        ("My account was hacked", "fraud_security"),
        ("弁護士に相談します", "legal"),
        ("I will sue you", "legal"),
        ("苦情を申し立てたい", "complaint"),
    ],
)
def test_sensitive_topics_escalate_with_the_topic_name(message: str, topic: str) -> None:
    d = POLICY.decide(signals(message, confidence=0.95))
    assert d.decision == "escalate"
    assert f"sensitive_topic:{topic}" in d.reasons


def test_describing_a_problem_is_not_frustration() -> None:
    problems = ("SIMが届いたけど使えない", "何度もパスワードを間違えてロックされた", "It failed again")
    for message in problems:
        assert POLICY.decide(signals(message)).decision == "answer", message


def test_latin_keywords_match_whole_words_only() -> None:
    assert contains_phrase("i will sue you", "sue")
    assert not contains_phrase("there is an issue with my bill", "sue")
    assert POLICY.decide(signals("There is an issue with my bill")).decision == "answer"


def test_sensitive_topics_are_configurable() -> None:
    config = EscalationConfig(answer_threshold=0.7, sensitive_topics={"billing": ["ＲＥＦＵＮＤ"]})
    policy = EscalationPolicy(config)
    assert policy.decide(signals("Can I get a refund?")).reasons == ("sensitive_topic:billing",)
    # The default topics are replaced, not merged.
    assert policy.decide(signals("解約したい")).decision == "answer"


@pytest.mark.parametrize(
    "message", ["何度も言ってるのに役に立たない", "This is useless", "早く！！！", "why??? answer!!!"]
)
def test_frustration_escalates(message: str) -> None:
    d = POLICY.decide(signals(message))
    assert "frustration" in d.reasons
    assert d.decision == "escalate"


def test_sending_the_same_message_again_is_frustration_but_short_ones_are_not() -> None:
    same = "SIMカードが届かないのですが"
    d = POLICY.decide(signals(same, previous_messages=(same,)))
    assert d.reasons == ("frustration",)
    assert POLICY.decide(signals("はい", previous_messages=("はい",))).decision == "answer"


def test_repeating_a_question_the_bot_answered_is_also_a_repeated_failure() -> None:
    d = POLICY.decide(
        signals(
            "SIMカードが届かないのですが",
            previous_messages=("SIMカードが届かないのですが。",),
            answered_sources=("faq-sim",),
        )
    )
    assert d.reasons == ("repeated_failure", "frustration")


def test_rephrasing_an_answered_question_is_a_repeated_failure() -> None:
    d = POLICY.decide(
        signals(
            "料金プランの変更をしたい",
            previous_messages=("料金プランを変更したいです",),
            answered_sources=("faq-plan",),
        )
    )
    assert d.decision == "escalate"
    assert d.reasons == ("repeated_failure",)


def test_a_new_question_after_an_answer_is_not_a_failure() -> None:
    other = (Candidate("faq-roaming", 0.95, "roaming"), Candidate("faq-plan", 0.9, "plans"))
    d = POLICY.decide(
        signals(
            "海外で使えますか",
            previous_messages=("料金プランを変更したいです",),
            answered_sources=("faq-plan",),
            candidates=other,
        )
    )
    assert d.decision == "answer"
    # A similar message whose best entry was never answered is a new question too.
    d = POLICY.decide(signals("料金プランの変更をしたい", previous_messages=("料金プランを変更したいです",)))
    assert d.decision == "answer"


def test_a_follow_up_that_finds_the_entry_just_answered_goes_to_a_person() -> None:
    # 「それはいつできますか」 after the plan answer: searched with the earlier question, the plan entry
    # is best again, so its answer (already sent) does not say what is asked now.
    again = POLICY.decide(signals("それはいつできますか", confidence=0.99, follow_up_of="faq-plan"))
    assert (again.decision, again.reasons) == ("escalate", ("unanswered_follow_up",))
    # A follow-up that finds another entry is answered as usual.
    other = POLICY.decide(signals("それはいくらですか", confidence=0.9, follow_up_of="faq-sim"))
    assert (other.decision, other.reasons) == ("answer", ())
    # Outside hours nobody can take it: the confident answer is given, with the reasons recorded.
    night = POLICY.decide(
        signals("それはいつできますか", confidence=0.99, follow_up_of="faq-plan", now=NIGHT)
    )
    assert night.decision == "answer" and night.reasons == ("unanswered_follow_up", "outside_hours")


def test_two_thumbs_down_escalate() -> None:
    assert POLICY.decide(signals(thumbs_down=1)).decision == "answer"
    d = POLICY.decide(signals(thumbs_down=2))
    assert (d.decision, d.reasons) == ("escalate", ("negative_feedback",))


def test_vip_customers_get_a_person_unless_the_bot_is_very_sure() -> None:
    assert POLICY.decide(signals(vip=True, confidence=0.8)).reasons == ("vip",)
    assert POLICY.decide(signals(vip=True, confidence=0.95)).decision == "answer"


def test_outside_hours_a_confident_answer_still_answers_and_records_why() -> None:
    d = POLICY.decide(signals("解約の方法を教えて", now=NIGHT, confidence=0.9))
    assert d.decision == "answer"
    assert d.reasons == ("sensitive_topic:cancellation", "outside_hours")


def test_outside_hours_low_confidence_takes_a_message_never_a_dead_queue() -> None:
    d = POLICY.decide(signals(now=NIGHT, confidence=0.1))
    assert (d.decision, d.reasons) == ("take_message", ("low_confidence", "outside_hours"))
    assert d.is_handoff


def test_outside_hours_an_explicit_human_request_takes_a_message_even_when_confident() -> None:
    d = POLICY.decide(signals("人と話したい", now=NIGHT, confidence=0.99))
    assert (d.decision, d.reasons) == ("take_message", ("human_requested", "outside_hours"))


@pytest.mark.parametrize(
    "availability", [Availability(on_shift=2, queue_length=20, queue_capacity=20), Availability(on_shift=0)]
)
def test_full_queue_or_nobody_on_shift(availability: Availability) -> None:
    low = POLICY.decide(signals(confidence=0.3, availability=availability, candidates=()))
    assert (low.decision, low.reasons) == ("take_message", ("low_confidence", "queue_full"))
    high = POLICY.decide(signals("苦情です", availability=availability))
    assert (high.decision, high.reasons) == ("answer", ("sensitive_topic:complaint", "queue_full"))


def test_business_hours_weekends_holidays_and_time_zones() -> None:
    hours = BusinessHours(closed_dates=[date(2025, 6, 5)])
    assert hours.is_open(OPEN)
    assert not hours.is_open(datetime(2025, 6, 7, 11, 0, tzinfo=TOKYO))  # Saturday
    assert not hours.is_open(datetime(2025, 6, 5, 11, 0, tzinfo=TOKYO))  # closed date
    assert not hours.is_open(datetime(2025, 6, 4, 18, 0, tzinfo=TOKYO))  # closing time is exclusive
    assert hours.is_open(datetime(2025, 6, 4, 2, 0, tzinfo=UTC))  # 11:00 in Tokyo
    assert hours.is_open(datetime(2025, 6, 4, 9, 0))  # naive = desk-local
    assert BusinessHours(open=time(0, 0), close=time(23, 59), weekdays=[1, 2, 3, 4, 5, 6, 7]).is_open(NIGHT)


def test_close_different_candidates_ask_a_clarifying_question() -> None:
    close = (Candidate("faq-plan", 0.910, "plans"), Candidate("faq-option", 0.905, "options"))
    d = POLICY.decide(signals(confidence=0.5, candidates=close))
    assert (d.decision, d.reasons) == ("clarify", ("ambiguous",))
    # Not twice in a row, not for two pieces of one source, not when no candidate is plausible.
    assert POLICY.decide(signals(confidence=0.5, candidates=close, clarified_last_turn=True)).decision == (
        "escalate"
    )
    same = (Candidate("manual-a", 0.910), Candidate("manual-a", 0.909))
    assert POLICY.decide(signals(confidence=0.5, candidates=same)).decision == "escalate"
    assert POLICY.decide(signals(confidence=0.1, candidates=close)).decision == "escalate"


def test_llm_failure_is_recorded_but_does_not_escalate_by_itself() -> None:
    d = POLICY.decide(signals(llm_failed=True))
    assert (d.decision, d.reasons) == ("answer", ("llm_unavailable",))


def test_threshold_comes_from_the_signals_when_config_has_none() -> None:
    policy = EscalationPolicy()
    assert policy.decide(signals(confidence=0.8, threshold=0.75)).decision == "answer"
    assert policy.decide(signals(confidence=0.8, threshold=0.85)).decision == "escalate"
    with pytest.raises(ValueError, match="threshold"):
        policy.decide(signals())
    assert decide_escalation(signals(threshold=0.5)).decision == "answer"


def test_bad_values_are_rejected() -> None:
    with pytest.raises(ValueError, match="1.5"):
        POLICY.decide(signals(confidence=1.5))
    with pytest.raises(ValidationError):
        EscalationConfig(answer_threshold=2.0)
    with pytest.raises(ValidationError, match="Mars/Olympus"):
        BusinessHours(timezone="Mars/Olympus")


def test_normalize_text_folds_width_and_case() -> None:
    assert normalize_text("  ＴＡＬＫ　to a PERSON ") == "talk to a person"
    assert normalize_text("ｵﾍﾟﾚｰﾀｰ") == "オペレーター"


_CONFIG = EscalationConfig()
_ALL_PHRASES = [
    *_CONFIG.human_request_phrases, *_CONFIG.frustration_keywords,
    *(p for phrases in _CONFIG.sensitive_topics.values() for p in phrases),
]
# Text built from pieces of the configured phrases, word characters and separators: near misses
# (a phrase glued to a letter or a digit, half a phrase) as well as hits.
_HALVES = [p[: len(p) // 2] for p in _ALL_PHRASES]
_PIECES = st.sampled_from([*_ALL_PHRASES, *_HALVES, "a", "1", " ", "-", "。"])


@given(st.lists(_PIECES, max_size=8).map("".join), st.lists(st.sampled_from(_ALL_PHRASES), max_size=6))
def test_a_phrase_set_matches_exactly_when_one_of_its_phrases_does(text: str, phrases: list[str]) -> None:
    normalized = normalize_text(text)
    expected = any(contains_phrase(normalized, p) for p in phrases)
    assert PhraseSet(phrases).found_in(normalized) is expected


def test_a_phrase_set_keeps_latin_phrases_to_whole_words() -> None:
    legal = PhraseSet(["sue", "legal action", "訴訟"])
    assert not legal.found_in("there is an issue with my bill")
    assert legal.found_in("i will sue you")
    assert legal.found_in("we are taking legal action.")
    assert legal.found_in("訴訟を検討しています")
    assert not PhraseSet([]).found_in("anything")
