"""Fine-tuning on (question, FAQ entry) pairs: a tiny sentence-transformers model built in-process learns
to put each question next to its passage; the gate; pairs from the review queue."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from assistant.db import Database
from assistant.keys import issue_key
from assistant.models import ReviewItem
from assistant.transcripts import NewConversation, add_message, open_conversation
from assistant.voc.finetune import (
    FinetuneConfig,
    FinetuneError,
    TrainingPair,
    finetune_model,
    reviewed_links,
    training_pairs,
)
from index.embed import SentenceTransformerEmbedder
from tests.index.test_embed import build_tiny_model

PAIRS = [
    TrainingPair("cat sat", "the cat sat on the mat"),
    TrainingPair("dog ran", "a dog ran fast"),
    TrainingPair("red mat", "the red mat"),
    TrainingPair("blue dog", "a blue dog sat"),
]


def _accuracy(model: Path) -> float:
    embedder = SentenceTransformerEmbedder(model, dtype="fp32")
    q = embedder.embed_queries([p.question for p in PAIRS])
    d = embedder.embed_documents([p.passage for p in PAIRS])
    return float(np.mean((q @ d.T).argmax(axis=1) == np.arange(len(PAIRS))))


def test_fine_tuning_puts_questions_next_to_their_entries(tmp_path: Path) -> None:
    base = build_tiny_model(tmp_path / "base", seed=3)
    config = FinetuneConfig(epochs=30, batch_size=4, learning_rate=1e-3, seed=0)
    tuned = finetune_model(base, PAIRS, tmp_path / "tuned", config)
    assert _accuracy(tuned) == 1.0
    assert _accuracy(tuned) > _accuracy(base)


def test_too_few_pairs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(FinetuneError, match="at least 2"):
        finetune_model(tmp_path / "nowhere", PAIRS[:1], tmp_path / "out", FinetuneConfig())


def test_pairs_come_from_applied_links(database: Database, knowledge_index: Any) -> None:
    with database.session() as session:
        key = issue_key(session, "customer", "site").info
        conversation = open_conversation(session, key, NewConversation())
        now = datetime.now(UTC)
        for text, faq, applied in [
            ("請求書が欲しい", "receipt", now),
            ("領収書", "receipt", None),
            ("古い質問", "gone", now),
        ]:
            message = add_message(session, conversation.id, "customer", text)
            session.add(
                ReviewItem(
                    message_id=message.id,
                    conversation_id=conversation.id,
                    question=text,
                    reasons=["escalated"],
                    status="linked",
                    faq_id=faq,
                    applied_at=applied,
                    created_at=now,
                )  # fmt: skip
            )
    with database.session() as session:
        links = reviewed_links(session)
    assert links == [("請求書が欲しい", "receipt"), ("古い質問", "gone")]
    pairs = training_pairs(knowledge_index, links)
    assert len(pairs) == 1 and pairs[0].question == "請求書が欲しい" and "領収書" in pairs[0].passage
