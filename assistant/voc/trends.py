"""Surging words and topics in customer messages: sliding windows against a baseline, pure functions.

Each message becomes the set of its content words (``index.textja.terms``: Sudachi normal forms for
Japanese, so 「つながらない」「繋がりません」 both count as 繋がる; stemmed words for English). For a window
ending at ``now`` and the baseline just before it, a word is tested by the share of messages containing it:
under "nothing changed" the window's count follows Binomial(n_window, p_baseline), with p_baseline Laplace-
smoothed so a never-seen word is not infinitely surprising and an empty baseline alerts on nothing. A
word surges when it appears in at least ``min_count`` window messages, at least ``min_ratio`` times its
expected count, and its binomial tail p-value is below ``alpha`` divided by the number of distinct words
in the window (Bonferroni: each was looked at). Testing shares, not counts, keeps a busy hour from
alerting.

Surging words that occur in the same messages (overlap of their message sets) form one topic, so an
outage gives one alert (繋がる + 電話 + 圏外), not three. Cooldown: a topic sharing a word with an alert
raised within ``cooldown`` is not raised again (``apply_cooldown``).
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from scipy.stats import binom

from index.textja import terms


@dataclass(frozen=True)
class TrendConfig:
    """Windows and thresholds of the detector (defaults: see ``assistant.settings.VocSettings``)."""

    window: timedelta = timedelta(hours=1)
    baseline: timedelta = timedelta(hours=72)
    min_count: int = 5
    min_ratio: float = 3.0
    alpha: float = 0.001
    cooldown: timedelta = timedelta(hours=6)
    group_overlap: float = 0.5
    max_examples: int = 3

    def __post_init__(self) -> None:
        if self.window <= timedelta(0) or self.baseline <= timedelta(0):
            raise ValueError(f"window and baseline must be positive, got {self.window}, {self.baseline}")
        if self.min_count < 1 or self.min_ratio < 1 or not 0 < self.alpha < 1:
            raise ValueError(
                f"need min_count >= 1, min_ratio >= 1, 0 < alpha < 1; got "
                f"{self.min_count!r}, {self.min_ratio!r}, {self.alpha!r}"
            )


@dataclass(frozen=True)
class TextEvent:
    """A customer message: when, what, and its id when it came from the database."""

    at: datetime
    text: str
    message_id: int | None = None


@dataclass(frozen=True)
class TermEvent:
    """A customer message with its content words (computed once, reused by every window)."""

    at: datetime
    text: str
    words: frozenset[str]
    message_id: int | None = None


@dataclass(frozen=True)
class WordSurge:
    """One word's test in one window."""

    word: str
    count: int  # window messages containing the word
    baseline_count: int
    expected: float
    ratio: float
    p_value: float


@dataclass(frozen=True)
class Surge:
    """A surging topic: its words (most significant first) and the evidence."""

    words: tuple[str, ...]
    window_start: datetime
    window_end: datetime
    count: int  # window messages containing any of the words
    window_messages: int
    baseline_messages: int
    lead: WordSurge
    examples: tuple[str, ...]
    message_ids: tuple[int, ...] = ()

    @property
    def label(self) -> str:
        """A short name for people: the words joined."""
        return "・".join(self.words[:4])


def to_term_events(events: Iterable[TextEvent]) -> list[TermEvent]:
    """Tokenize messages once, sorted by time."""
    out = [TermEvent(e.at, e.text, frozenset(terms(e.text)), e.message_id) for e in events]
    out.sort(key=lambda e: e.at)
    return out


def _slice(
    events: Sequence[TermEvent], times: Sequence[datetime], start: datetime, end: datetime
) -> Sequence[TermEvent]:
    """Events with ``start < at <= end`` (``times`` is the sorted list of their timestamps)."""
    return events[bisect.bisect_right(times, start) : bisect.bisect_right(times, end)]


def surging_words(
    window: Sequence[TermEvent], baseline: Sequence[TermEvent], config: TrendConfig
) -> list[WordSurge]:
    """The words of ``window`` that surge against ``baseline``, most significant first."""
    n1, n0 = len(window), len(baseline)
    if n1 == 0:
        return []
    now_counts = Counter(w for e in window for w in e.words)
    base_counts = Counter(w for e in baseline for w in e.words)
    candidates = []
    for word, count in now_counts.items():
        p0 = (base_counts[word] + 1) / (n0 + 2)  # Laplace: an empty baseline means p0 = 1/2
        expected = n1 * p0
        if count >= config.min_count and count >= config.min_ratio * expected:
            candidates.append((word, count, expected))
    surges = []
    for word, count, expected in candidates:
        p_value = float(binom.sf(count - 1, n1, expected / n1))
        # Every word of the window was looked at, so every one counts in the correction.
        if p_value * len(now_counts) < config.alpha:
            surges.append(WordSurge(word, count, base_counts[word], expected, count / expected, p_value))
    surges.sort(key=lambda s: (s.p_value, -s.count, s.word))
    return surges


def _group(
    surges: Sequence[WordSurge], window: Sequence[TermEvent], threshold: float
) -> list[list[WordSurge]]:
    """Join words whose message sets overlap: union-find, most significant first.

    Overlap = |A & B| / min(|A|, |B|), not Jaccard: a word found only in some of an outage's messages
    (「朝から全然繋がりません」 -> 全然) belongs to the outage, however many other outage messages lack it.
    """
    docs = {s.word: {i for i, e in enumerate(window) if s.word in e.words} for s in surges}
    parent = list(range(len(surges)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, a in enumerate(surges):
        for j in range(i + 1, len(surges)):
            da, db = docs[a.word], docs[surges[j].word]
            if len(da & db) / min(len(da), len(db)) >= threshold:
                parent[root(j)] = root(i)
    groups: dict[int, list[WordSurge]] = {}
    for i, s in enumerate(surges):
        groups.setdefault(root(i), []).append(s)
    return sorted(groups.values(), key=lambda g: (g[0].p_value, g[0].word))


def detect_surges(
    events: Sequence[TermEvent], now: datetime, config: TrendConfig, times: Sequence[datetime] | None = None
) -> list[Surge]:
    """Surging topics in the window ``(now - window, now]`` against the baseline before it."""
    times = times if times is not None else [e.at for e in events]
    start = now - config.window
    window = _slice(events, times, start, now)
    baseline = _slice(events, times, start - config.baseline, start)
    out = []
    for group in _group(surging_words(window, baseline, config), window, config.group_overlap):
        words = {s.word for s in group}
        hits = [e for e in window if e.words & words]
        # Examples: the messages that carry the most of the topic's words, newest first on ties.
        ranked = sorted(hits, key=lambda e: (-len(e.words & words), -e.at.timestamp()))
        out.append(
            Surge(
                words=tuple(s.word for s in group),
                window_start=start,
                window_end=now,
                count=len(hits),
                window_messages=len(window),
                baseline_messages=len(baseline),
                lead=group[0],
                examples=tuple(dict.fromkeys(e.text for e in ranked))[: config.max_examples],
                message_ids=tuple(e.message_id for e in hits if e.message_id is not None),
            )
        )
    return out


@dataclass(frozen=True)
class RecentAlert:
    """An alert already raised: its words and when (for the cooldown)."""

    words: frozenset[str]
    at: datetime


def apply_cooldown(
    surges: Sequence[Surge], recent: Iterable[RecentAlert], now: datetime, cooldown: timedelta
) -> list[Surge]:
    """Drop surges sharing a word with an alert raised in the last ``cooldown``."""
    live = [r.words for r in recent if now - r.at < cooldown]
    return [s for s in surges if not any(set(s.words) & words for words in live)]


def replay(
    events: Iterable[TextEvent], start: datetime, end: datetime, step: timedelta, config: TrendConfig
) -> list[Surge]:
    """Run the detector every ``step`` from ``start`` to ``end`` over a recorded stream, with cooldown.

    What a scheduled job would have raised: each check sees only messages up to its own time.
    """
    if step <= timedelta(0):
        raise ValueError(f"step must be positive, got {step}")
    termed = to_term_events(events)
    times = [e.at for e in termed]
    raised: list[Surge] = []
    recent: list[RecentAlert] = []
    checks = math.floor((end - start) / step)
    for i in range(checks + 1):
        now = start + i * step
        fresh = apply_cooldown(detect_surges(termed, now, config, times), recent, now, config.cooldown)
        raised.extend(fresh)
        recent.extend(RecentAlert(frozenset(s.words), now) for s in fresh)
    return raised
