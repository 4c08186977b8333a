"""Fine-tune the embedding model on accumulated (question, FAQ entry) pairs.

The pairs are what reviewers taught the bot: each linked question with the text of its entry
(question and answer, as the index embeds it). Training is one short CPU pass of sentence-transformers'
``MultipleNegativesRankingLoss`` (the other entries of a batch are the negatives), with the model's
own e5 prefixes (``query: `` for questions, ``passage: `` for entries). A tuned model is saved as an
ordinary sentence-transformers folder; whether it goes live is decided by an evaluation
(``eval.learning``), never here.

Errors: ``FinetuneError`` (too few pairs to train on).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from assistant.models import ReviewItem
from index.chunk import embed_text
from index.search import KnowledgeIndex


class FinetuneError(ValueError):
    """The inputs cannot support a fine-tuning run."""


@dataclass(frozen=True)
class TrainingPair:
    """A customer question and the text of the FAQ entry that answers it."""

    question: str
    passage: str


@dataclass(frozen=True)
class FinetuneConfig:
    """One small CPU pass (measured on LocalgovFAQ: see ``eval.learning.finetune_fold``)."""

    epochs: int = 1
    batch_size: int = 16
    learning_rate: float = 2e-5
    max_seq_length: int = 256
    seed: int = 0


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with torch's intra-op pool at ``threads`` (process-wide), then restore it."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def reviewed_links(session: Session) -> list[tuple[str, str]]:
    """(question, faq_id) of every linked review item already applied to the knowledge base."""
    rows = session.execute(
        select(ReviewItem.question, ReviewItem.faq_id)
        .where(ReviewItem.status == "linked", ReviewItem.applied_at.is_not(None))
        .order_by(ReviewItem.id)
    ).all()
    return [(q, f) for q, f in rows if f]


def training_pairs(index: KnowledgeIndex, links: Iterable[tuple[str, str]]) -> list[TrainingPair]:
    """Pairs for the links whose entry is in ``index`` (others are skipped)."""
    entries = {c.source_id: embed_text(c) for c in index.chunks if c.kind == "faq"}
    return [TrainingPair(q, entries[f]) for q, f in links if f in entries]


def finetune_model(
    base: str | Path, pairs: Sequence[TrainingPair], out_dir: Path, config: FinetuneConfig
) -> Path:
    """Train a copy of ``base`` on ``pairs`` and save it to ``out_dir``; returns ``out_dir``."""
    if len(pairs) < 2:
        raise FinetuneError(f"need at least 2 training pairs (in-batch negatives), got {len(pairs)}")
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.losses import MultipleNegativesRankingLoss

    torch.manual_seed(config.seed)
    model = SentenceTransformer(str(base), device="cpu")
    model.max_seq_length = min(config.max_seq_length, model.max_seq_length or config.max_seq_length)
    query_prefix = model.prompts.get("query", "")
    doc_prefix = model.prompts.get("document") or model.prompts.get("passage") or ""
    loss = MultipleNegativesRankingLoss(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate)
    rng = random.Random(config.seed)
    model.train()
    for _ in range(config.epochs):
        order = list(pairs)
        rng.shuffle(order)
        for start in range(0, len(order) - 1, config.batch_size):
            batch = order[start : start + config.batch_size]
            if len(batch) < 2:
                continue
            anchors = model.preprocess([query_prefix + p.question for p in batch])
            positives = model.preprocess([doc_prefix + p.passage for p in batch])
            value = loss([anchors, positives], torch.empty(0))
            value.backward()
            optimizer.step()
            optimizer.zero_grad()
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save(str(out_dir))
    return out_dir
