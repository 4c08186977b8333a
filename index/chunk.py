"""Structure-aware chunking: FAQ entries stay whole; manual sections are cut at sentence ends."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from index.documents import Chunk, FaqEntry, Manual, Section, SourceDoc, content_hash
from index.textja import approx_tokens, detect_language, split_sentences

CHUNKER_VERSION = "1"


@dataclass(frozen=True)
class ChunkingConfig:
    """Token budget per manual chunk and the overlap carried into the next chunk (in tokens)."""

    max_tokens: int = 320
    overlap_tokens: int = 48

    def __post_init__(self) -> None:
        if self.max_tokens < 16:
            raise ValueError(f"max_tokens must be at least 16, got {self.max_tokens!r}")
        if not 0 <= self.overlap_tokens < self.max_tokens // 2:
            raise ValueError(f"overlap_tokens must be in [0, max_tokens/2), got {self.overlap_tokens!r}")

    def describe(self) -> dict[str, object]:
        """The settings that define the chunks, for the index manifest."""
        return {
            "version": CHUNKER_VERSION,
            "max_tokens": self.max_tokens,
            "overlap_tokens": self.overlap_tokens,
        }


def chunk_documents(docs: Iterable[SourceDoc], config: ChunkingConfig | None = None) -> list[Chunk]:
    """Chunk every source document."""
    config = config or ChunkingConfig()
    out: list[Chunk] = []
    for doc in docs:
        out.extend(chunk_document(doc, config))
    return out


def chunk_document(doc: SourceDoc, config: ChunkingConfig) -> list[Chunk]:
    """The chunks of one source document."""
    if isinstance(doc.payload, FaqEntry):
        return [faq_chunk(doc.payload)]
    return manual_chunks(doc.payload, config)


def faq_chunk(entry: FaqEntry) -> Chunk:
    """An FAQ entry as one chunk; its question and variations are also embedded on their own."""
    text = f"{entry.question}\n{entry.answer}"
    return Chunk(
        id=f"faq:{entry.id}",
        source_id=entry.id,
        kind="faq",
        title=entry.question,
        heading_path=(entry.category,) if entry.category else (),
        text=text,
        url=entry.url,
        language=entry.language or detect_language(text),
        content_hash=content_hash(text),
        updated_at=entry.updated_at,
        category=entry.category,
        question=entry.question,
        answer=entry.answer,
        variations=entry.variations,
    )


def manual_chunks(manual: Manual, config: ChunkingConfig) -> list[Chunk]:
    """Cut each section into chunks within the token budget, at sentence ends, with overlap."""
    out: list[Chunk] = []
    for section in manual.sections:
        section_key = content_hash(*section.heading_path)[:10]
        for n, body in enumerate(_pack(section, config)):
            out.append(
                Chunk(
                    id=f"{manual.id}#{section_key}-{n}",
                    source_id=manual.id,
                    kind="manual",
                    title=manual.title,
                    heading_path=section.heading_path,
                    text=body,
                    url=manual.url,
                    language=manual.language or detect_language(body),
                    content_hash=content_hash(" > ".join(section.heading_path), body),
                    updated_at=manual.updated_at,
                    category=manual.category,
                )
            )
    return out


def _split_long(sentence: str, budget: int) -> list[str]:
    """A sentence over the budget (a table, a run-on line) is cut at lines, then by characters."""
    if approx_tokens(sentence) <= budget:
        return [sentence]
    pieces: list[str] = []
    for line in sentence.split("\n"):
        while approx_tokens(line) > budget:
            cut = max(1, int(len(line) * budget / approx_tokens(line)))
            pieces.append(line[:cut])
            line = line[cut:]
        if line.strip():
            pieces.append(line)
    return pieces


def _pack(section: Section, config: ChunkingConfig) -> list[str]:
    sentences = [p for s in split_sentences(section.text) for p in _split_long(s, config.max_tokens)]
    chunks: list[str] = []
    current: list[str] = []
    carried = 0  # sentences at the head of ``current`` repeated from the previous chunk
    size = 0
    for sent in sentences:
        cost = approx_tokens(sent)
        if len(current) > carried and size + cost > config.max_tokens:
            chunks.append(_join(current))
            current, size = _overlap_tail(current, min(config.overlap_tokens, config.max_tokens - cost))
            carried = len(current)
        current.append(sent)
        size += cost
    if len(current) > carried:
        chunks.append(_join(current))
    return chunks


def _overlap_tail(sentences: list[str], budget: int) -> tuple[list[str], int]:
    """The last sentences of a chunk, up to ``budget`` tokens, to start the next chunk with."""
    tail: list[str] = []
    size = 0
    for sent in reversed(sentences):
        cost = approx_tokens(sent)
        if size + cost > budget:
            break
        tail.insert(0, sent)
        size += cost
    return tail, size


def _join(sentences: list[str]) -> str:
    out = ""
    for s in sentences:
        if out and (s[:1].isascii() and out[-1:].isascii()):
            out += " "
        elif out and not out.endswith("\n"):
            out += "\n" if s.startswith("・") else ""
        out += s
    return out


def embed_text(chunk: Chunk) -> str:
    """The text a chunk's main vector is computed from: the heading path gives a manual piece context."""
    if chunk.kind == "faq":
        return chunk.text
    return " > ".join(chunk.heading_path) + "\n" + chunk.text
