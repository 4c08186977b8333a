"""One customer turn: search, judge confidence, decide, answer (extractive or generated) or hand over.

``Responder.respond(turn)`` returns a ``Reply``; ``Responder.stream(turn)`` yields text deltas and then
the final ``Reply`` (whose text is authoritative: after a failure mid-stream it replaces the deltas).
A chat-model failure never raises: the extractive answer is sent instead, with reason
``llm_unavailable``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING

from assistant.answer import (
    Answer,
    Citation,
    citations_for,
    clarification,
    extractive_answer,
    handoff_message,
)
from assistant.confidence import ConfidenceModel, EntryVectors
from assistant.conversation import build_search_query
from assistant.escalate import (
    LLM_UNAVAILABLE,
    Availability,
    Candidate,
    Decision,
    DecisionKind,
    EscalationPolicy,
    Signals,
)
from assistant.llm import ChatMessage, ChatModel, ChatModelError, LiteLLMChat
from index.documents import SearchHit, distinct_sources
from index.search import KnowledgeIndex
from index.textja import Language, detect_language
from prompts import PromptPair

if TYPE_CHECKING:
    from assistant.settings import Settings

log = logging.getLogger(__name__)
_CITATION = re.compile(r"\[(\d{1,2})\]")
_ROLE_FOR_PROMPT = {"customer": "customer", "bot": "assistant", "operator": "operator"}


@dataclass(frozen=True)
class TurnInput:
    """Everything one turn needs to know about the conversation and the desk."""

    history: tuple[tuple[str, str], ...]  # (role, text), oldest first; role customer, bot or operator
    message: str
    now: datetime
    vip: bool = False
    locale: str = "ja"
    availability: Availability = field(default_factory=Availability)
    thumbs_down: int = 0
    # Entries the bot answered from earlier in the conversation, the most recent last.
    answered_sources: tuple[str, ...] = ()
    last_decision: str | None = None  # the decision of the bot's previous reply, if any


@dataclass(frozen=True)
class Reply:
    """The bot's reply with the evidence behind it."""

    text: str
    citations: tuple[Citation, ...]
    confidence: float
    decision: DecisionKind
    reasons: tuple[str, ...]
    search_query: str
    hit_ids: tuple[str, ...] = ()
    # The distinct sources of the hits, best first (logged: the content audit's "never retrieved").
    retrieved: tuple[str, ...] = ()
    language: Language = "ja"
    generated: bool = False  # True when a chat model wrote the text
    prompt_version: str | None = None


@dataclass(frozen=True)
class TurnPlan:
    """What the turn decided before any text is generated."""

    decision: Decision
    hits: tuple[SearchHit, ...]
    language: Language
    search_query: str


class Responder:
    """Answers customer turns from one knowledge index."""

    def __init__(
        self,
        index: KnowledgeIndex,
        confidence_model: ConfidenceModel,
        policy: EscalationPolicy,
        chat: ChatModel | None = None,
        prompts: PromptPair | None = None,
        *,
        company: str = "our company",
        search_k: int = 10,
        max_passages: int = 3,
        max_answer_chars: int = 400,
    ) -> None:
        self.index = index
        self.entries = EntryVectors.from_index(index)
        self.confidence_model = confidence_model
        self.policy = policy
        self.chat = chat
        self.prompts = prompts or PromptPair.load("answer")
        self.company = company
        self.search_k = search_k
        self.max_passages = max_passages
        self.max_answer_chars = max_answer_chars

    @classmethod
    def from_settings(cls, settings: Settings, index: KnowledgeIndex) -> Responder:
        """The responder the settings describe: confidence model, configured policy and LLM.

        The confidence model is ``settings.confidence_model`` when set (``madoguchi eval calibrate``
        writes one), else the shipped default.
        """
        llm = settings.llm
        chat = None
        if llm.model:
            chat = LiteLLMChat(llm.model, api_base=llm.api_base, api_key=llm.api_key, timeout=llm.timeout,
                               retries=llm.retries)
        path = settings.confidence_model
        model = ConfidenceModel.load(path) if path is not None else ConfidenceModel.load()
        return cls(index, model, EscalationPolicy(settings.escalation), chat)

    def respond(self, turn: TurnInput) -> Reply:
        """The reply to one customer message."""
        plan = self.plan(turn)
        if plan.decision.decision != "answer" or self.chat is None:
            return self._reply_without_llm(plan)
        try:
            text = self.chat.complete(self._prompt(turn, plan))
        except ChatModelError as exc:
            log.warning("chat model failed, answering extractively: %s", exc)
            return self._llm_fallback(plan)
        return self._generated_reply(plan, text)

    def stream(self, turn: TurnInput) -> Iterator[str | Reply]:
        """Text deltas, then the final ``Reply``."""
        plan = self.plan(turn)
        if plan.decision.decision != "answer" or self.chat is None:
            reply = self._reply_without_llm(plan)
            yield reply.text
            yield reply
            return
        parts: list[str] = []
        try:
            for delta in self.chat.stream(self._prompt(turn, plan)):
                parts.append(delta)
                yield delta
        except ChatModelError as exc:
            log.warning("chat model failed mid-stream, answering extractively: %s", exc)
            yield self._llm_fallback(plan)
            return
        yield self._generated_reply(plan, "".join(parts))

    def plan(self, turn: TurnInput) -> TurnPlan:
        """Search, score confidence and decide: everything but writing the answer."""
        default: Language = "ja" if turn.locale.lower().startswith("ja") else "en"
        language = detect_language(turn.message, default=default)
        query = build_search_query(turn.history, turn.message)
        vector = self.index.embedder.embed_queries([query.text])  # once, for the search and the features
        raw_hits = self.index.search(query.text, self.search_k, query_vector=vector)
        (assessment,) = self.entries.assess([query.text], [raw_hits], vector)
        confidence = self.confidence_model.probability(assessment.features) if assessment.features else 0.0
        signals = Signals(
            message=turn.message,
            confidence=confidence,
            now=turn.now,
            candidates=_candidates(assessment.hits),
            previous_messages=tuple(text for role, text in turn.history if role == "customer"),
            answered_sources=turn.answered_sources,
            thumbs_down=turn.thumbs_down,
            vip=turn.vip,
            availability=turn.availability,
            clarified_last_turn=turn.last_decision == "clarify",
            follow_up_of=_followed_up_source(turn, query.expanded),
            threshold=self.confidence_model.threshold,
        )
        decision = self.policy.decide(signals)
        return TurnPlan(decision, assessment.hits, language, query.text)

    def _reply_without_llm(self, plan: TurnPlan, extra_reasons: tuple[str, ...] = ()) -> Reply:
        kind = plan.decision.decision
        if kind == "answer":
            answer = extractive_answer(plan.hits[0], self.max_answer_chars)
        elif kind == "clarify":
            answer = clarification(distinct_sources(plan.hits)[:3], plan.language)
        else:
            answer = Answer(handoff_message(kind, plan.language), ())
        return self._reply(plan, answer, extra_reasons)

    def _llm_fallback(self, plan: TurnPlan) -> Reply:
        return self._reply_without_llm(plan, (LLM_UNAVAILABLE,))

    def _generated_reply(self, plan: TurnPlan, text: str) -> Reply:
        passages = plan.hits[: self.max_passages]
        cited = sorted({int(n) for n in _CITATION.findall(text) if 1 <= int(n) <= len(passages)})
        if not text.strip() or not cited:
            # Nothing grounded in the passages (or a refusal): the team's own words are safer.
            log.info("generated answer cites no passage; answering extractively")
            return self._reply_without_llm(plan)
        citations = tuple(c for c in citations_for(passages) if c.number in cited)
        reply = self._reply(plan, Answer(text.strip(), citations), ())
        return replace(reply, generated=True, prompt_version=self.prompts.version)

    def _reply(self, plan: TurnPlan, answer: Answer, extra_reasons: tuple[str, ...]) -> Reply:
        reasons = plan.decision.reasons + tuple(r for r in extra_reasons if r not in plan.decision.reasons)
        return Reply(
            text=answer.text,
            citations=answer.citations,
            confidence=plan.decision.confidence,
            decision=plan.decision.decision,
            reasons=reasons,
            search_query=plan.search_query,
            hit_ids=tuple(h.chunk.id for h in plan.hits),
            retrieved=tuple(h.chunk.source_id for h in distinct_sources(plan.hits)),
            language=plan.language,
        )

    def _prompt(self, turn: TurnInput, plan: TurnPlan) -> list[ChatMessage]:
        passages = [
            {"number": c.number, "title": c.title, "url": c.url, "text": (h.chunk.answer or h.chunk.text)}
            for c, h in zip(citations_for(plan.hits[: self.max_passages]), plan.hits, strict=False)
        ]
        history = [{"role": _ROLE_FOR_PROMPT.get(r, r), "text": t} for r, t in turn.history[-6:]]
        system = self.prompts.system.render(language=plan.language, company=self.company, max_sentences=4)
        user = self.prompts.user.render(passages=passages, history=history, question=turn.message)
        return [ChatMessage("system", system), ChatMessage("user", user)]


def _followed_up_source(turn: TurnInput, expanded: bool) -> str | None:
    """The entry the bot answered from just before, when this message follows up on that answer."""
    if expanded and turn.last_decision == "answer" and turn.answered_sources:
        return turn.answered_sources[-1]
    return None


def _candidates(hits: Sequence[SearchHit]) -> tuple[Candidate, ...]:
    """The best hits of different sources, for the policy's clarification rule."""
    return tuple(
        Candidate(h.chunk.source_id, h.dense_score or 0.0, h.chunk.category, h.chunk.display_title)
        for h in distinct_sources(hits)[:3]
    )
