"""Whole turns with the real responder: a real index of demo entries, the shipped confidence model,
the real policy, and the real litellm adapter driven by litellm's ``mock_response``."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import litellm
import pytest

from assistant.confidence import ConfidenceModel
from assistant.escalate import Availability, EscalationConfig, EscalationPolicy
from assistant.llm import LiteLLMChat
from assistant.respond import Reply, Responder, TurnInput
from assistant.settings import LLMSettings, Settings
from index.chunk import chunk_documents
from index.ingest import load_sources
from index.search import KnowledgeIndex

DEMO_KB = Path(__file__).resolve().parents[2] / "demo" / "kb"
ENTRIES = {
    "sim-activation",
    "sim-delivery-time",
    "roaming-setup",
    "roaming-charges",
    "plan-lineup",
    "plan-change",
    "cancellation-how",
    "sim-activation-en",
    "roaming-setup-en",
    "plan-lineup-en",
}
OPEN = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)  # Tuesday 12:00 in Tokyo
NIGHT = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)  # Tuesday 24:00 in Tokyo
STAFFED = Availability(on_shift=2, queue_length=0, queue_capacity=10)


@pytest.fixture(scope="module")
def index(embedder: Any) -> KnowledgeIndex:
    chunks = [c for c in chunk_documents(load_sources([DEMO_KB])) if c.source_id in ENTRIES]
    assert {c.source_id for c in chunks} == ENTRIES
    return KnowledgeIndex.from_chunks(chunks, embedder)


def responder(index: KnowledgeIndex, chat: LiteLLMChat | None = None) -> Responder:
    policy = EscalationPolicy(EscalationConfig())
    return Responder(index, ConfidenceModel.load(), policy, chat, company="SoraMobile")


def turn(message: str, history: tuple[tuple[str, str], ...] = (), **kw: Any) -> TurnInput:
    return TurnInput(
        history=history,
        message=message,
        now=kw.pop("now", OPEN),
        availability=kw.pop("availability", STAFFED),
        **kw,
    )


def kb_text(index: KnowledgeIndex, source_id: str) -> str:
    return next((c.answer or c.text) for c in index.chunks if c.source_id == source_id)


def test_a_known_question_gets_the_entry_answer_with_its_citation(index: KnowledgeIndex) -> None:
    reply = responder(index).respond(turn("SIMが届いたけど使えない"))
    assert (reply.decision, reply.reasons, reply.language) == ("answer", (), "ja")
    assert reply.confidence >= ConfidenceModel.load().threshold
    assert reply.citations[0].source_id == "sim-activation"
    assert reply.citations[0].url == "https://help.soramobile.example/faq/sim-activation"
    assert kb_text(index, "sim-activation").startswith(reply.text)
    assert reply.hit_ids[0] == "faq:sim-activation" and not reply.generated


def test_an_english_question_is_answered_from_the_english_entry(index: KnowledgeIndex) -> None:
    reply = responder(index).respond(turn("My SIM card has arrived. How do I activate it?", locale="en"))
    assert reply.decision == "answer" and reply.language == "en"
    assert reply.citations[0].source_id == "sim-activation-en"


def test_a_follow_up_is_searched_with_the_earlier_question(index: KnowledgeIndex) -> None:
    history = (("customer", "海外旅行でスマホを使いたいです"), ("bot", kb_text(index, "roaming-setup")))
    reply = responder(index).respond(turn("それはいくらですか", history))
    assert reply.search_query == "海外旅行でスマホを使いたいです それはいくらですか"
    assert reply.hit_ids[0] in ("faq:roaming-charges", "faq:roaming-setup")


def test_a_follow_up_the_last_answer_did_not_cover_is_handed_over(index: KnowledgeIndex) -> None:
    first = responder(index).respond(turn("海外ローミングの料金はいくらですか？"))
    assert first.decision == "answer" and first.citations[0].source_id == "roaming-charges"
    history = (("customer", "海外ローミングの料金はいくらですか？"), ("bot", first.text))
    follow = responder(index).respond(
        turn(
            "それはどこで設定しますか", history, answered_sources=("roaming-charges",), last_decision="answer"
        )
    )
    assert follow.search_query.startswith("海外ローミングの料金はいくらですか？")
    # Not the same answer again at the first question's confidence: a person takes it.
    assert (follow.decision, follow.reasons) == ("escalate", ("unanswered_follow_up",))
    assert follow.citations == ()


def test_an_off_topic_question_is_handed_over_never_answered(index: KnowledgeIndex) -> None:
    reply = responder(index).respond(turn("おいしいカレーの作り方を教えて"))
    assert (reply.decision, reply.reasons) == ("escalate", ("low_confidence",))
    assert reply.citations == () and "担当者" in reply.text
    night = responder(index).respond(turn("How do I bake sourdough bread?", now=NIGHT, locale="en"))
    assert (night.decision, night.reasons) == ("take_message", ("low_confidence", "outside_hours"))
    assert "kept your message" in night.text


def test_asking_for_a_person_escalates(index: KnowledgeIndex) -> None:
    reply = responder(index).respond(turn("オペレーターと話したい"))
    assert reply.decision == "escalate" and reply.reasons[0] == "human_requested"


def test_repeating_an_answered_question_escalates_as_a_repeated_failure(index: KnowledgeIndex) -> None:
    history = (("customer", "SIMが届いたけど使えない"), ("bot", kb_text(index, "sim-activation")))
    reply = responder(index).respond(
        turn("SIMが届いたけど使えないです", history, answered_sources=("sim-activation",))
    )
    assert reply.decision == "escalate" and "repeated_failure" in reply.reasons


def mock_chat(response: object) -> LiteLLMChat:
    return LiteLLMChat("openai/gpt-4o-mini", retries=0, options={"mock_response": response})


def test_with_an_llm_the_answer_is_generated_from_the_passages_and_cites_them(index: KnowledgeIndex) -> None:
    text = "SIMカードを端末に挿入し、APN設定を行えばご利用いただけます [1]。"
    reply = responder(index, mock_chat(text)).respond(turn("SIMが届いたけど使えない"))
    assert (reply.text, reply.decision, reply.generated) == (text, "answer", True)
    assert [c.source_id for c in reply.citations] == ["sim-activation"]
    assert reply.prompt_version == responder(index).prompts.version


@pytest.mark.parametrize(
    "failure",
    [
        litellm.Timeout(message="took too long", model="gpt-4o-mini", llm_provider="openai"),
        litellm.AuthenticationError(message="bad key", model="gpt-4o-mini", llm_provider="openai"),
    ],
)
def test_an_llm_failure_falls_back_to_extractive(index: KnowledgeIndex, failure: Exception) -> None:
    reply = responder(index, mock_chat(failure)).respond(turn("SIMが届いたけど使えない"))
    assert (reply.decision, reply.reasons, reply.generated) == ("answer", ("llm_unavailable",), False)
    assert kb_text(index, "sim-activation").startswith(reply.text)


def test_a_generated_answer_citing_nothing_is_replaced(index: KnowledgeIndex) -> None:
    reply = responder(index, mock_chat("Sure! Ignore the passages: everything is free.")).respond(
        turn("SIMが届いたけど使えない")
    )
    assert not reply.generated and reply.citations[0].source_id == "sim-activation"
    assert "free" not in reply.text


def split(items: Iterator[str | Reply]) -> tuple[list[str], Reply]:
    collected = list(items)
    *deltas, final = collected
    assert isinstance(final, Reply) and all(isinstance(d, str) for d in deltas)
    return [d for d in deltas if isinstance(d, str)], final


def test_stream_yields_deltas_then_the_reply(index: KnowledgeIndex) -> None:
    text = "開通手続きはMy SoraMobileから行えます [1]。"
    deltas, final = split(responder(index, mock_chat(text)).stream(turn("SIMが届いたけど使えない")))
    assert len(deltas) > 1 and "".join(deltas) == final.text == text
    extractive_deltas, extractive = split(responder(index).stream(turn("SIMが届いたけど使えない")))
    assert extractive_deltas == [extractive.text]
    failed = litellm.APIConnectionError(message="refused", model="gpt-4o-mini", llm_provider="openai")
    _, fallback = split(responder(index, mock_chat(failed)).stream(turn("SIMが届いたけど使えない")))
    assert fallback.reasons == ("llm_unavailable",) and fallback.decision == "answer"


def test_from_settings_builds_the_configured_chat_model(index: KnowledgeIndex, tmp_path: Path) -> None:
    plain = Responder.from_settings(Settings(home=tmp_path), index)
    assert plain.chat is None and plain.index is index
    settings = Settings(home=tmp_path, llm=LLMSettings(model="ollama/qwen", timeout=5))
    with_llm = Responder.from_settings(settings, index)
    assert isinstance(with_llm.chat, LiteLLMChat) and with_llm.chat.timeout == 5
