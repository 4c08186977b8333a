"""The escalation policy: answer, ask a clarifying question, escalate, or take a message.

Pure and configurable: ``EscalationPolicy(config).decide(signals)`` reads only its arguments (no
clock, no database, no model) and returns a ``Decision`` with stable reason codes, so that every
decision can be stored, explained and replayed in evaluation.

Reason codes: ``human_requested``, ``low_confidence``, ``sensitive_topic:<name>``,
``repeated_failure``, ``unanswered_follow_up``, ``negative_feedback``, ``frustration``, ``vip``,
``outside_hours``, ``queue_full``, ``llm_unavailable``, ``ambiguous``.

A follow-up (「それはいつできますか」 right after an answer) is searched together with the earlier
question, so it finds the entry just answered from, with the earlier question's confidence. When that
entry is again the best, its answer did not say what the customer now asks: sending it again would be
a confident non-answer, and answering from the next entry risks a neighbour's facts (the eSIM fee for
a SIM card), so a person takes over (``unanswered_follow_up``).

When a human is wanted but none can take the conversation now (outside business hours, nobody on
shift, or the queue at capacity), the bot still answers when it is confident and the customer did not
ask for a person; otherwise it takes a message that operators pick up later. Never a dead queue.

This module raises only ``ValueError`` for bad arguments.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, time
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, Field, field_validator
from rapidfuzz import fuzz

DecisionKind = Literal["answer", "clarify", "escalate", "take_message"]

HUMAN_REQUESTED = "human_requested"
LOW_CONFIDENCE = "low_confidence"
SENSITIVE_TOPIC = "sensitive_topic"
REPEATED_FAILURE = "repeated_failure"
UNANSWERED_FOLLOW_UP = "unanswered_follow_up"
NEGATIVE_FEEDBACK = "negative_feedback"
FRUSTRATION = "frustration"
VIP = "vip"
OUTSIDE_HOURS = "outside_hours"
QUEUE_FULL = "queue_full"
LLM_UNAVAILABLE = "llm_unavailable"
AMBIGUOUS = "ambiguous"

# A repeated message shorter than this ("hello?", 「はい」) is not read as insistence.
_MIN_REPEAT_CHARS = 6


def normalize_text(text: str) -> str:
    """NFKC (full-width to half-width, compatibility forms), case-folded, whitespace collapsed."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text).casefold()).strip()


def contains_phrase(normalized_text: str, phrase: str) -> bool:
    """Whether a normalized phrase occurs in normalized text.

    Latin-script phrases must match whole words ("sue" is not in "issue"); Japanese has no spaces
    between words, so a Japanese phrase matches as a substring.
    """
    if not phrase:
        return False
    if phrase.isascii():
        return re.search(rf"(?<![a-z0-9]){re.escape(phrase)}(?![a-z0-9])", normalized_text) is not None
    return phrase in normalized_text


class PhraseSet:
    """Normalized phrases matched as ``contains_phrase`` does, all in one pass.

    The Latin-script phrases become one regular expression (whole words), the Japanese ones stay
    substrings. A policy builds its sets once: every customer message is checked against dozens of
    phrases, which one ``re.search`` per phrase made a visible part of a turn's time.
    """

    def __init__(self, phrases: Iterable[str]) -> None:  # noqa: D107 -- phrases as contains_phrase takes them
        kept = [p for p in dict.fromkeys(phrases) if p]
        latin = sorted((p for p in kept if p.isascii()), key=len, reverse=True)
        self._substrings = tuple(p for p in kept if not p.isascii())
        self._latin = (
            re.compile(rf"(?<![a-z0-9])(?:{'|'.join(map(re.escape, latin))})(?![a-z0-9])") if latin else None
        )

    def found_in(self, normalized_text: str) -> bool:
        """Whether any phrase occurs in the normalized text."""
        if any(p in normalized_text for p in self._substrings):
            return True
        return self._latin is not None and self._latin.search(normalized_text) is not None


# ---------------------------------------------------------------------------------------------------
# Configuration (pydantic: it is read from settings)
# ---------------------------------------------------------------------------------------------------


class BusinessHours(BaseModel):
    """When operators work. Outside these hours escalations become messages for later."""

    timezone: str = "Asia/Tokyo"
    # ISO weekdays (1 = Monday ... 7 = Sunday) on which the desk is open.
    weekdays: list[int] = Field(default_factory=lambda: [1, 2, 3, 4, 5])
    open: time = time(9, 0)
    close: time = time(18, 0)
    # Public holidays and closures (local dates): closed all day.
    closed_dates: list[date] = Field(default_factory=list)

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    def is_open(self, now: datetime) -> bool:
        """Whether the desk is open at ``now`` (a naive datetime is read as local desk time)."""
        zone = ZoneInfo(self.timezone)
        local = now.replace(tzinfo=zone) if now.tzinfo is None else now.astimezone(zone)
        if local.isoweekday() not in self.weekdays or local.date() in self.closed_dates:
            return False
        return self.open <= local.time() < self.close


def _default_human_phrases() -> list[str]:
    return [
        # Japanese: "I want to talk to an operator / a person", "switch me to someone in charge".
        "オペレーター", "オペレータ", "人と話したい", "人間と話したい", "人に代わって", "人につないで",
        "担当者", "有人", "スタッフと話", "窓口の人", "電話で話したい", "誰か人",
        # English
        "talk to a person", "talk to a human", "speak to a person", "speak to a human",
        "speak with a person", "speak with a human", "talk with a person", "talk to someone",
        "speak to someone", "human agent", "live agent", "real person", "real human", "an agent",
        "customer service representative", "representative", "operator",
    ]


def _default_sensitive_topics() -> dict[str, list[str]]:
    return {
        "cancellation": [
            "解約", "退会", "やめたい", "辞めたい", "違約金", "mnp", "番号ポータビリティ", "他社に乗り換え",
            "cancel my", "cancellation", "terminate my contract", "close my account", "switch carrier",
        ],
        "complaint": [
            "苦情", "クレーム", "責任者", "上司を出", "消費者センター", "謝罪", "納得できない",
            "complaint", "complain", "manager", "supervisor", "unacceptable",
        ],
        "fraud_security": [
            "不正", "詐欺", "乗っ取", "なりすまし", "身に覚えのない", "盗まれ", "紛失", "ハッキング",
            "fraud", "scam", "stolen", "hacked", "unauthorized", "unauthorised", "phishing",
            "identity theft", "someone used my account", "lost my phone",
        ],
        "legal": [
            "弁護士", "訴訟", "訴え", "裁判", "法的", "個人情報の開示", "警察",
            "lawyer", "attorney", "lawsuit", "sue", "legal action", "court", "police", "gdpr",
        ],
    }


def _default_frustration_keywords() -> list[str]:
    return [
        # Not 「使えない」 or 「何度も」 alone: customers describe problems with them (「SIMが使えない」).
        "ふざけるな", "ふざけんな", "いい加減にして", "いいかげんにして", "何度も言", "何回も言",
        "役に立たない", "意味がない", "意味ない", "話にならない", "最悪", "ありえない", "怒", "もういい",
        "ポンコツ",
        "useless", "ridiculous", "terrible", "worst", "waste of time", "stupid", "not helpful",
        "doesn't help", "does not help", "already told you", "again and again", "fed up", "wtf",
    ]


class EscalationConfig(BaseModel):
    """Every knob of the escalation policy, with its default and why."""

    # Answer only at or above this calibrated confidence. None: use the threshold stored in the
    # fitted confidence artifact (chosen for the artifact's target precision, default 0.95).
    answer_threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    # Offer a choice instead of escalating when the two best entries are different and their
    # similarities lie within this gap (cosine; the packaged model's scores sit in a narrow band).
    clarify_max_gap: float = Field(default=0.01, ge=0.0)
    # ... and only if the bot is at least this confident that one of them is right.
    clarify_min_confidence: float = Field(default=0.3, ge=0.0, le=1.0)
    # Phrases (matched after NFKC + case folding) that ask for a person.
    human_request_phrases: list[str] = Field(default_factory=_default_human_phrases)
    # Topics a person should handle; reason ``sensitive_topic:<name>``.
    sensitive_topics: dict[str, list[str]] = Field(default_factory=_default_sensitive_topics)
    frustration_keywords: list[str] = Field(default_factory=_default_frustration_keywords)
    # A run of this many exclamation marks (half- or full-width) reads as frustration.
    frustration_exclamations: int = Field(default=3, ge=2)
    # Sending (nearly) the same message again, with no new words: fuzzy ratio in [0, 100].
    repeat_min_similarity: float = Field(default=90.0, ge=0.0, le=100.0)
    # A rephrasing of a question the bot already answered from the same entry (fuzzy, [0, 100]).
    rephrase_min_similarity: float = Field(default=50.0, ge=0.0, le=100.0)
    # Thumbs-down ratings in this conversation that hand it to a person.
    negative_feedback_limit: int = Field(default=2, ge=1)
    # VIP customers get the bot's answer only at this confidence or above; otherwise a person.
    vip_min_confidence: float = Field(default=0.9, ge=0.0, le=1.0)
    business_hours: BusinessHours = Field(default_factory=BusinessHours)

    @field_validator("human_request_phrases", "frustration_keywords")
    @classmethod
    def _normalize_phrases(cls, value: list[str]) -> list[str]:
        return [normalize_text(p) for p in value if p.strip()]

    @field_validator("sensitive_topics")
    @classmethod
    def _normalize_topics(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        return {name: [normalize_text(p) for p in words if p.strip()] for name, words in value.items()}


# ---------------------------------------------------------------------------------------------------
# Inputs and outputs (frozen dataclasses)
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """One of the best knowledge entries for the message: who it is and how similar it is."""

    source_id: str
    similarity: float
    category: str | None = None
    title: str = ""


@dataclass(frozen=True)
class Availability:
    """Operators who could take the conversation now."""

    on_shift: int = 1
    queue_length: int = 0
    queue_capacity: int = 20


@dataclass(frozen=True)
class Signals:
    """Everything the policy looks at for one customer message."""

    message: str
    confidence: float
    now: datetime
    candidates: tuple[Candidate, ...] = ()
    previous_messages: tuple[str, ...] = ()  # the customer's earlier messages, oldest first
    answered_sources: tuple[str, ...] = ()  # entries the bot already answered from in this conversation
    thumbs_down: int = 0
    vip: bool = False
    availability: Availability = field(default_factory=Availability)
    llm_failed: bool = False
    clarified_last_turn: bool = False
    threshold: float | None = None  # the confidence artifact's threshold, if config has none
    # The entry of the bot's previous answer, when this message is a follow-up to it.
    follow_up_of: str | None = None


@dataclass(frozen=True)
class Decision:
    """What to do with the message, why, and how sure the bot was."""

    decision: DecisionKind
    reasons: tuple[str, ...]
    confidence: float

    @property
    def is_handoff(self) -> bool:
        """Whether a person (now or later) takes over the conversation."""
        return self.decision in ("escalate", "take_message")


# ---------------------------------------------------------------------------------------------------
# The policy
# ---------------------------------------------------------------------------------------------------


class EscalationPolicy:
    """Decides, from the signals of one message, whether the bot answers or a person takes over.

    Its phrase lists are compiled when it is built: a changed ``EscalationConfig`` takes a new policy.
    """

    def __init__(self, config: EscalationConfig | None = None) -> None:
        self.config = config or EscalationConfig()
        self._human = PhraseSet(self.config.human_request_phrases)
        self._sensitive = {name: PhraseSet(p) for name, p in self.config.sensitive_topics.items()}
        self._frustration = PhraseSet(self.config.frustration_keywords)

    def threshold(self, signals: Signals) -> float:
        """The answer threshold: from config, else from the confidence artifact via the signals."""
        value = self.config.answer_threshold
        if value is None:
            value = signals.threshold
        if value is None:
            raise ValueError("no answer threshold in EscalationConfig.answer_threshold or Signals.threshold")
        return value

    def decide(self, signals: Signals) -> Decision:
        """Answer, clarify, escalate or take a message, with the reasons in a stable order."""
        if not 0.0 <= signals.confidence <= 1.0:
            raise ValueError(f"confidence must be in [0, 1], got {signals.confidence!r}")
        text = normalize_text(signals.message)
        confident = signals.confidence >= self.threshold(signals)
        handoff = self.handoff_reasons(signals, text)
        notes = (LLM_UNAVAILABLE,) if signals.llm_failed else ()
        if not handoff:
            if confident:
                return Decision("answer", notes, signals.confidence)
            if self.is_ambiguous(signals):
                return Decision("clarify", (AMBIGUOUS, *notes), signals.confidence)
            handoff = (LOW_CONFIDENCE,)
        elif not confident:
            handoff = (*handoff, LOW_CONFIDENCE)
        unavailable = self.unavailability_reasons(signals)
        if not unavailable:
            return Decision("escalate", (*handoff, *notes), signals.confidence)
        reasons = (*handoff, *unavailable, *notes)
        # Nobody can take it now: a confident answer beats waiting, unless a person was asked for.
        if confident and HUMAN_REQUESTED not in handoff:
            return Decision("answer", reasons, signals.confidence)
        return Decision("take_message", reasons, signals.confidence)

    def handoff_reasons(self, signals: Signals, text: str) -> tuple[str, ...]:
        """Reasons, other than low confidence, for a person to take the conversation."""
        reasons: list[str] = []
        if self.is_human_requested(text):
            reasons.append(HUMAN_REQUESTED)
        reasons.extend(f"{SENSITIVE_TOPIC}:{name}" for name in self.sensitive_topics(text))
        if self.is_repeated_failure(signals, text):
            reasons.append(REPEATED_FAILURE)
        elif self.is_unanswered_follow_up(signals):
            reasons.append(UNANSWERED_FOLLOW_UP)
        if signals.thumbs_down >= self.config.negative_feedback_limit:
            reasons.append(NEGATIVE_FEEDBACK)
        if self.is_frustrated(signals, text):
            reasons.append(FRUSTRATION)
        if signals.vip and signals.confidence < self.config.vip_min_confidence:
            reasons.append(VIP)
        return tuple(reasons)

    def is_human_requested(self, text: str) -> bool:
        """Whether the (normalized) message asks for a person."""
        return self._human.found_in(text)

    def sensitive_topics(self, text: str) -> tuple[str, ...]:
        """Names of the configured sensitive topics the (normalized) message touches."""
        return tuple(name for name, phrases in self._sensitive.items() if phrases.found_in(text))

    def is_frustrated(self, signals: Signals, text: str) -> bool:
        """Angry words, a run of exclamation marks, or the same message sent again."""
        if self._frustration.found_in(text):
            return True
        if "!" * self.config.frustration_exclamations in text.replace(" ", ""):
            return True
        # Sending the same words again ("hello?" twice is not insistence, so short ones do not count).
        return self._repeats_earlier_message(signals, text)

    def is_unanswered_follow_up(self, signals: Signals) -> bool:
        """A follow-up whose best entry is the one the bot just answered from (see the module doc)."""
        top = signals.candidates[0].source_id if signals.candidates else None
        return signals.follow_up_of is not None and top == signals.follow_up_of

    def is_repeated_failure(self, signals: Signals, text: str) -> bool:
        """The customer asks again what the bot already answered: the answer did not help.

        Either the message repeats an earlier one after the bot had answered, or it is a looser
        rephrasing of an earlier message whose best entry is one the bot already answered from.
        """
        if not signals.answered_sources:
            return False
        if self._repeats_earlier_message(signals, text):
            return True
        top = signals.candidates[0].source_id if signals.candidates else None
        if top not in signals.answered_sources:
            return False
        return any(
            fuzz.ratio(text, normalize_text(p)) >= self.config.rephrase_min_similarity
            for p in signals.previous_messages
        )

    def _repeats_earlier_message(self, signals: Signals, text: str) -> bool:
        if len(text) < _MIN_REPEAT_CHARS:
            return False
        return any(
            fuzz.ratio(text, normalize_text(p)) >= self.config.repeat_min_similarity
            for p in signals.previous_messages
        )

    def is_ambiguous(self, signals: Signals) -> bool:
        """The two best candidates are different entries, nearly tied, and one is likely right."""
        if signals.clarified_last_turn or len(signals.candidates) < 2:
            return False
        if signals.confidence < self.config.clarify_min_confidence:
            return False
        first, second = signals.candidates[0], signals.candidates[1]
        if first.source_id == second.source_id:
            return False
        return first.similarity - second.similarity <= self.config.clarify_max_gap

    def unavailability_reasons(self, signals: Signals) -> tuple[str, ...]:
        """Why no operator can take the conversation now (empty when one can)."""
        if not self.config.business_hours.is_open(signals.now):
            return (OUTSIDE_HOURS,)
        a = signals.availability
        # Nobody on shift during opening hours is a queue of capacity zero.
        if a.on_shift <= 0 or a.queue_length >= a.queue_capacity:
            return (QUEUE_FULL,)
        return ()


def decide_escalation(signals: Signals, config: EscalationConfig | None = None) -> Decision:
    """Shortcut for ``EscalationPolicy(config).decide(signals)``."""
    return EscalationPolicy(config).decide(signals)
