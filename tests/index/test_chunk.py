"""Chunking keeps structure: FAQ entries whole, manual pieces within budget at sentence ends."""

from __future__ import annotations

from pathlib import Path

import pytest

from index import textja
from index.chunk import ChunkingConfig, chunk_documents, embed_text
from index.documents import Manual, Section, SourceDoc
from index.ingest import load_sources, manual_source
from index.textja import approx_tokens, split_sentences, terms

KB = Path(__file__).resolve().parents[1] / "data" / "kb_small"


def test_faq_entries_stay_whole_and_chunks_carry_metadata() -> None:
    chunks = chunk_documents(load_sources([KB], root=KB))
    faq = next(c for c in chunks if c.id == "faq:sim-activation")
    assert faq.text.startswith(faq.question or "") and faq.answer and faq.answer in faq.text
    assert faq.url and faq.updated_at == "2026-01-02" and faq.language == "ja" and faq.content_hash
    manual = [c for c in chunks if c.source_id == "manual:manuals/apn-guide"]
    assert manual and all(c.heading_path[0] == "APN設定ガイド" for c in manual)
    assert all(c.url == "https://help.soramobile.example/manual/apn" for c in manual)
    assert len({c.id for c in chunks}) == len(chunks)
    assert "APN設定ガイド > Androidの場合" in embed_text(
        next(c for c in manual if "Android" in c.heading_path[-1])
    )


def _manual(text: str) -> SourceDoc:
    return manual_source(Manual("manual:t", "T", (Section(("T", "S"), text),)), "t.md")


def test_manual_sections_are_cut_at_sentence_ends_with_overlap() -> None:
    sentences = [f"これは{i}番目の説明文で、手順を詳しく述べています。" for i in range(40)]
    config = ChunkingConfig(max_tokens=80, overlap_tokens=30)
    chunks = chunk_documents([_manual("".join(sentences))], config)
    assert len(chunks) > 5
    for c in chunks:
        assert approx_tokens(c.text) <= 80 + 5
        assert c.text.endswith("。")  # cut at a sentence end
    for a, b in zip(chunks, chunks[1:], strict=False):
        assert split_sentences(a.text)[-1] == split_sentences(b.text)[0]  # overlap carries a sentence
    covered = {s for c in chunks for s in split_sentences(c.text)}
    assert covered == set(sentences)


def test_chunk_ids_are_stable_when_another_section_changes() -> None:
    def doc(first: str) -> SourceDoc:
        return manual_source(
            Manual("manual:t", "T", (Section(("T", "A"), first), Section(("T", "B"), "変わらない文です。"))),
            "t.md",
        )

    before = {c.id: c.text for c in chunk_documents([doc("最初の文です。")])}
    after = {c.id: c.text for c in chunk_documents([doc("書き換えた文です。")])}
    stable = [i for i in before if before[i] == "変わらない文です。"]
    assert stable and all(after.get(i) == "変わらない文です。" for i in stable)


def test_english_sentences_and_a_long_line_without_ends() -> None:
    text = "First step. Second step! Third? " + "x" * 2000
    chunks = chunk_documents([_manual(text)], ChunkingConfig(max_tokens=100, overlap_tokens=10))
    assert chunks[0].text.startswith("First step. Second step! Third?")
    assert sum(len(c.text) for c in chunks) >= 2000


def test_terms_keep_content_words_in_normal_form() -> None:
    assert terms("ＳＩＭカードが届きました。開通手続きは？") == ["sim", "カード", "届く", "開通", "手続き"]
    assert terms("How do I cancel my plans?") == ["cancel", "plan"]


def test_threads_tokenize_with_their_own_tokenizer_over_one_shared_dictionary() -> None:
    import threading
    from concurrent.futures import ThreadPoolExecutor

    together = threading.Barrier(4)  # four threads at once, so none is reused

    def in_a_thread(_: int) -> tuple[list[str], int, int]:
        together.wait(timeout=10)
        found = terms("料金の支払い方法を変更したい")
        return found, id(textja._local.tokenizer), id(textja._shared_dictionary())

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(in_a_thread, range(4)))
    assert all(found == results[0][0] and "支払い" in found for found, _, _ in results)
    assert len({tokenizer for _, tokenizer, _ in results}) == 4  # one tokenizer per thread
    assert len({dictionary for _, _, dictionary in results}) == 1  # the dictionary is loaded once


def test_chunking_config_is_validated() -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        ChunkingConfig(max_tokens=4)
    with pytest.raises(ValueError, match="overlap_tokens"):
        ChunkingConfig(max_tokens=100, overlap_tokens=60)
