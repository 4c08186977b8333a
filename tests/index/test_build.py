"""Building and updating an index on disk: incremental, atomic, and searchable with the real model."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from index.build import add_documents, build_index, remove_documents
from index.store import (
    IndexMismatchError,
    IndexNotFoundError,
    current_generation,
    load_index,
    read_manifest,
    read_sources,
)
from tests.conftest import SMALL_KB


@pytest.fixture
def kb(tmp_path: Path) -> Path:
    root = tmp_path / "kb"
    shutil.copytree(SMALL_KB, root)
    return root


def test_build_then_search_finds_the_right_entries(tmp_path: Path, kb: Path, embedder) -> None:  # type: ignore[no-untyped-def]
    report = build_index(tmp_path / "idx", [kb], embedder, root=kb)
    assert len(report.added) == 9 and report.embedded == report.vectors
    idx = load_index(tmp_path / "idx", embedder)
    cases = {
        "SIMが届いたのにネットが使えない": "sim-activation",
        "解約金ってかかるの？": "cancel",
        "how do I cancel?": "cancel-en",
        "海外で使うといくら？": "manual:manuals/roaming",
        "クレジットカードを変更したい": "pay-method",
    }
    for query, source in cases.items():
        top = idx.search(query, 3)
        assert top[0].chunk.source_id == source, (query, [h.chunk.id for h in top])
        assert top[0].rank == 1 and top[0].dense_rank is not None
    hit = idx.search("SIMが届いたけど使えない", 1)[0]
    assert hit.matched_field == "question" and hit.question_score is not None and hit.question_score > 0.99
    manifest = read_manifest(tmp_path / "idx")
    assert manifest["embedder"] == embedder.name and manifest["dimension"] == embedder.dim
    assert manifest["chunking"]["max_tokens"] == 320 and manifest["faiss"] == "IndexFlatIP"


def test_filters_by_category_and_language(tmp_path: Path, kb: Path, embedder) -> None:  # type: ignore[no-untyped-def]
    build_index(tmp_path / "idx", [kb], embedder, root=kb)
    idx = load_index(tmp_path / "idx", embedder)
    hits = idx.search("解約", 10, language="en")
    assert hits and {h.chunk.language for h in hits} == {"en"}
    hits = idx.search("設定", 10, category="APN")
    assert hits and {h.chunk.category for h in hits} == {"APN"}
    assert idx.search("設定", 10, category="no-such-category") == []


def test_updates_are_incremental(tmp_path: Path, kb: Path, embedder) -> None:  # type: ignore[no-untyped-def]
    directory = tmp_path / "idx"
    first = build_index(directory, [kb], embedder, root=kb)
    again = build_index(directory, [kb], embedder, root=kb)
    assert again.embedded == 0 and again.unchanged == len(first.added) and not again.changed

    faq = kb / "faq.yaml"
    faq.write_text(
        faq.read_text(encoding="utf-8").replace(
            "    - 開通のやり方を教えて\n", "    - 開通のやり方を教えて\n    - SIMを有効にしたい\n"
        ),
        encoding="utf-8",
    )
    report = build_index(directory, [kb], embedder, root=kb)
    assert report.changed == ("sim-activation",) and report.embedded == 1  # only the new variation
    idx = load_index(directory, embedder)
    assert idx.search("SIMを有効にしたい", 1)[0].question_score == pytest.approx(1.0, abs=1e-3)

    guide = kb / "manuals" / "apn-guide.md"
    guide.write_text(
        guide.read_text(encoding="utf-8").replace(
            "端末を再起動してください。", "端末を再起動してください。SIMの抜き差しも試してください。"
        ),
        encoding="utf-8",
    )
    report = build_index(directory, [kb], embedder, root=kb)
    # One section changed: its piece's whole text and body are embedded again, its heading is not.
    assert report.changed == ("manual:manuals/apn-guide",) and report.embedded == 2

    (kb / "faq_billing.csv").unlink()
    report = build_index(directory, [kb], embedder, root=kb)
    assert set(report.removed) == {"pay-method", "receipt"} and report.embedded == 0
    assert "pay-method" not in read_sources(directory)
    assert all(
        h.chunk.source_id != "pay-method" for h in load_index(directory, embedder).search("支払い方法", 10)
    )


def test_add_and_remove_keep_other_documents(tmp_path: Path, kb: Path, embedder) -> None:  # type: ignore[no-untyped-def]
    directory = tmp_path / "idx"
    build_index(directory, [kb / "faq.yaml"], embedder, root=kb)
    report = add_documents(directory, [kb / "faq_billing.csv"], embedder, root=kb)
    assert set(report.added) == {"pay-method", "receipt"} and report.unchanged == 4
    report = remove_documents(directory, ["cancel-en"], embedder)
    assert report.removed == ("cancel-en",)
    assert set(read_sources(directory)) == {
        "sim-activation",
        "apn-android",
        "cancel",
        "pay-method",
        "receipt",
    }
    with pytest.raises(KeyError, match="no-such-id"):
        remove_documents(directory, ["no-such-id"], embedder)


def test_bad_input_writes_nothing(tmp_path: Path, kb: Path, embedder) -> None:  # type: ignore[no-untyped-def]
    directory = tmp_path / "idx"
    build_index(directory, [kb], embedder, root=kb)
    live = current_generation(directory)
    (kb / "broken.csv").write_text("id,question,answer\nx,only-question\n", encoding="utf-8")
    with pytest.raises(ValueError, match="broken.csv:2"):
        build_index(directory, [kb], embedder, root=kb)
    assert current_generation(directory) == live


def test_missing_and_mismatched_index(tmp_path: Path, kb: Path, embedder) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(IndexNotFoundError, match="index build"):
        load_index(tmp_path / "nothing", embedder)
    build_index(tmp_path / "idx", [kb / "faq.yaml"], embedder, root=kb)
    manifest = current_generation(tmp_path / "idx") / "manifest.json"
    data = json.loads(manifest.read_text()) | {"embedder": "some-other-model"}
    manifest.write_text(json.dumps(data))
    with pytest.raises(IndexMismatchError, match="some-other-model"):
        load_index(tmp_path / "idx", embedder)


_WRITER = """
import sys
from pathlib import Path
from index.build import build_index
from index.embed import load_embedder
from tests.conftest import model_cache_dir
e = load_embedder("default", model_cache_dir())
print("ready", flush=True)
build_index(Path(sys.argv[1]), [Path(sys.argv[2])], e, root=Path(sys.argv[2]))
"""


def test_a_killed_update_leaves_the_previous_index_usable(tmp_path: Path, kb: Path, embedder) -> None:  # type: ignore[no-untyped-def]
    directory = tmp_path / "idx"
    build_index(directory, [kb / "faq.yaml"], embedder, root=kb)
    before = current_generation(directory)
    # A bigger update for the writer to be killed in the middle of: 300 new manual paragraphs.
    big = kb / "manuals" / "big.md"
    big.write_text(
        "# 大きな手引き\n"
        + "".join(f"## 節{i}\n手順{i}の説明です。設定を確認します。\n" for i in range(300)),
        encoding="utf-8",
    )
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    for delay in (0.5, 2.0):
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(directory), str(kb)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        live = current_generation(directory)
        idx = load_index(directory, embedder)  # whatever happened, the live index loads and answers
        assert idx.search("解約したい", 1)[0].chunk.source_id == "cancel"
        if live == before:
            assert len(idx.chunks) == 4
    report = build_index(directory, [kb], embedder, root=kb)  # the next writer finishes the job
    assert "manual:manuals/big" in set(report.added) | set(read_sources(directory))
    assert not list(directory.glob("gen-*.tmp"))


def test_search_with_a_precomputed_query_vector_matches(tmp_path: Path, kb: Path, embedder) -> None:  # type: ignore[no-untyped-def]
    build_index(tmp_path / "idx", [kb], embedder, root=kb)
    idx = load_index(tmp_path / "idx", embedder)
    query = "支払い方法を変えたい"
    vector = embedder.embed_queries([query])
    plain = [(h.chunk.id, round(h.score, 6)) for h in idx.search(query, 5)]
    assert [(h.chunk.id, round(h.score, 6)) for h in idx.search(query, 5, query_vector=vector)] == plain
    with pytest.raises(ValueError, match="query_vectors must have shape"):
        idx.search_many([query, "x"], 5, query_vectors=vector)
