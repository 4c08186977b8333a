"""Reading the conversation so far: the customer's language and the search query for a message.

Pure helpers. A follow-up such as 「それはいくらですか」 or "how much is it?" names no topic of its own:
searched alone it finds nothing useful, so it is searched together with the customer's earlier
question (and the title of the entry the bot last answered from, when known).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from index.textja import detect_language, terms

# Words that point back at something said before (demonstratives, pronouns) or open a follow-up.
_JA_ANAPHORA = (
    "それ", "その", "そちら", "そっち", "そこ", "これ", "この", "こちら", "あれ", "あの", "同じ",
    "じゃあ", "では", "それで", "ちなみに", "あと", "ほかに", "他に", "さっき", "先ほど",
)
_EN_ANAPHORA = re.compile(
    r"\b(it|its|it's|that|this|those|these|they|them|there|one|same|above|"
    r"what about|how about|and|also|then)\b"
)
# Terms that carry no topic: question words and generic verbs that survive the BM25 term filter.
_GENERIC_TERMS = {
    "いくら", "幾ら", "いつ", "何時", "どこ", "何処", "だれ", "誰", "どれ", "何れ", "なぜ", "何故", "出来る",
    "教える", "分かる", "知る", "良い", "いい", "ある", "ない", "無い", "いる", "要る", "掛かる", "かかる",
    "much", "many", "long", "cost", "price", "work", "need", "get", "tell", "know", "take", "possible",
    # Money words ask about something named before: 「料金はいくらですか」 after 「海外で使えますか」.
    "料金", "値段", "費用", "手数料", "金額", "fee", "fees", "charge", "charges",
}
# A follow-up is short: at most this many characters (Japanese) or words (English).
_MAX_FOLLOW_UP_CHARS = 25
_MAX_FOLLOW_UP_WORDS = 8


@dataclass(frozen=True)
class SearchQuery:
    """What to search for a message, and whether earlier turns were pulled in."""

    text: str
    expanded: bool
    context: tuple[str, ...] = ()  # the earlier texts added to the message


def topic_terms(text: str) -> list[str]:
    """Content words that name a topic (not question words or generic verbs)."""
    return [t for t in terms(text) if t not in _GENERIC_TERMS]


def is_follow_up(text: str) -> bool:
    """Short, and either pointing back (それ, "it", "what about") or naming no topic of its own."""
    norm = unicodedata.normalize("NFKC", text).strip().lower()
    if not norm:
        return False
    if detect_language(norm, default="en") == "ja":
        if len(norm) > _MAX_FOLLOW_UP_CHARS:
            return False
        points_back = any(a in norm for a in _JA_ANAPHORA)
    else:
        if len(norm.split()) > _MAX_FOLLOW_UP_WORDS:
            return False
        points_back = _EN_ANAPHORA.search(norm) is not None
    return points_back or not topic_terms(norm)


def build_search_query(
    history: Sequence[tuple[str, str]], message: str, last_topic: str | None = None
) -> SearchQuery:
    """The retrieval query for ``message`` given the earlier turns (oldest first).

    A follow-up is prefixed with the customer's last question that stood on its own (with the
    follow-ups asked since, up to two), and with ``last_topic`` (the title of the entry the bot last
    answered from) when given.
    """
    message = message.strip()
    if not is_follow_up(message):
        return SearchQuery(message, expanded=False)
    earlier: list[str] = []
    for role, text in reversed(history):
        if role != "customer" or not text.strip():
            continue
        earlier.insert(0, text.strip())
        if not is_follow_up(text) or len(earlier) >= 3:
            break
    context = tuple(dict.fromkeys([*([last_topic] if last_topic else []), *earlier]))
    if not context:
        return SearchQuery(message, expanded=False)
    return SearchQuery(" ".join([*context, message]), expanded=True, context=context)
