"""Reading FAQ entries and manuals, and the errors bad input gets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from index.documents import FaqEntry, Manual
from index.ingest import IngestError, load_sources

KB = Path(__file__).resolve().parents[1] / "data" / "kb_small"


def test_reads_every_format_of_the_small_kb() -> None:
    docs = load_sources([KB], root=KB)
    by_id = {d.id: d for d in docs}
    assert {"sim-activation", "apn-android", "cancel", "cancel-en", "pay-method", "receipt"} <= set(by_id)
    sim = by_id["sim-activation"].payload
    assert isinstance(sim, FaqEntry)
    assert sim.variations == ("SIMが届いたけど使えない", "開通のやり方を教えて")
    assert sim.category == "SIM" and sim.updated_at == "2026-01-02" and sim.language == "ja"
    assert by_id["cancel-en"].payload.language == "en"  # type: ignore[union-attr]
    pay = by_id["pay-method"].payload
    assert isinstance(pay, FaqEntry) and pay.variations == ("クレジットカードを変えたい", "口座振替にしたい")
    md = by_id["manual:manuals/apn-guide"].payload
    assert isinstance(md, Manual)
    assert md.title == "APN設定ガイド" and md.url == "https://help.soramobile.example/manual/apn"
    paths = [s.heading_path for s in md.sections]
    assert ("APN設定ガイド", "iPhoneの場合", "構成プロファイルのインストール") in paths
    html = by_id["manual:manuals/roaming"].payload
    assert isinstance(html, Manual)
    text = "\n".join(s.text for s in html.sections)
    assert "ホーム | FAQ" not in text and "© SoraMobile" not in text  # boilerplate dropped
    assert "アジア | 980円" in text  # table rows kept as text
    assert by_id["manual:manuals/notice"].payload.title == "メンテナンスのお知らせ"  # type: ignore[union-attr]


def test_content_hash_changes_only_with_content(tmp_path: Path) -> None:
    f = tmp_path / "faq.json"
    f.write_text(json.dumps([{"id": "a", "question": "Q?", "answer": "A."}]), encoding="utf-8")
    h1 = load_sources([f])[0].content_hash
    assert load_sources([f])[0].content_hash == h1
    f.write_text(json.dumps([{"id": "a", "question": "Q?", "answer": "A!"}]), encoding="utf-8")
    assert load_sources([f])[0].content_hash != h1


def test_jsonl_and_markdown_faq(tmp_path: Path) -> None:
    (tmp_path / "faq.jsonl").write_text(
        '{"id": "x1", "question": "料金は？", "answer": "月990円です。"}\n\n'
        '{"id": "x2", "question": "Speed?", "answer": "Up to 1 Gbps.", "variations": ["how fast"]}\n',
        encoding="utf-8",
    )
    (tmp_path / "faq-extra.md").write_text(
        "# FAQ\n\n## 5Gは使えますか？\n<!-- id: five-g; category: 通信; variations: 5G対応 | 5Gエリア -->\n"
        "はい、5G対応端末で追加料金なしで使えます。\n\n## 圏外になる\n再起動してください。\n",
        encoding="utf-8",
    )
    docs = {d.id: d.payload for d in load_sources([tmp_path])}
    assert set(docs) == {"x1", "x2", "five-g", "faq-extra-2"}
    five = docs["five-g"]
    assert (
        isinstance(five, FaqEntry) and five.variations == ("5G対応", "5Gエリア") and five.category == "通信"
    )
    assert five.answer == "はい、5G対応端末で追加料金なしで使えます。"


def test_shift_jis_csv_is_detected_and_decoded(tmp_path: Path) -> None:
    f = tmp_path / "export.csv"
    f.write_bytes("id,question,answer\nsj1,解約したい,いつでも解約できます。\n".encode("cp932"))
    [doc] = load_sources([f])
    assert isinstance(doc.payload, FaqEntry) and doc.payload.question == "解約したい"


def _error_for(tmp_path: Path, name: str, content: bytes | str) -> IngestError:
    f = tmp_path / name
    f.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    with pytest.raises(IngestError) as info:
        load_sources([f])
    assert str(f) in str(info.value)
    return info.value


@pytest.mark.parametrize(
    ("name", "content", "line", "words"),
    [
        ("empty.csv", "", None, "empty"),
        ("blank.yaml", "   \n", None, "empty"),
        ("rows.csv", "id,question,answer\na,Q1,A1\nb,Q2\n", 3, "non-empty question and answer"),
        ("extra.csv", "id,question,answer\na,Q1,A1,oops\n", 2, "fields"),
        ("nohead.csv", "id,text\na,hello\n", 1, "lacks column"),
        (
            "dup.jsonl",
            '{"id":"a","question":"Q","answer":"A"}\n{"id":"a","question":"Q2","answer":"B"}\n',
            2,
            "duplicate id",
        ),
        ("bad.jsonl", '{"id":"a","question":"Q","answer":"A"}\n{"id": oops}\n', 2, "invalid JSON"),
        ("bad.yaml", "- id: a\n  question: Q\n  answer: [unclosed\n", None, "invalid YAML"),
        ("noid.yaml", "- question: Q\n  answer: A\n- id: b\n  question: Q\n", 1, "no id"),
        ("field.yaml", "- id: a\n  question: Q\n  answer: A\n  colour: red\n", 1, "unknown field"),
        ("date.json", '[{"id":"a","question":"Q","answer":"A","updated_at":"yesterday"}]', None, "ISO date"),
        ("binary.csv", b"id,question\n\xff\xfe\x00\x81\x00", 2, "not valid UTF-8"),
    ],
)
def test_bad_input_names_file_and_line(
    tmp_path: Path, name: str, content: str | bytes, line: int | None, words: str
) -> None:
    error = _error_for(tmp_path, name, content)
    assert words in str(error)
    if line is not None:
        assert error.line == line


def test_unknown_type_and_missing_path(tmp_path: Path) -> None:
    (tmp_path / "faq.docx").write_bytes(b"PK")
    with pytest.raises(IngestError, match="unknown file type"):
        load_sources([tmp_path / "faq.docx"])
    with pytest.raises(IngestError, match="no such file"):
        load_sources([tmp_path / "nope.yaml"])
    empty = tmp_path / "emptydir"
    empty.mkdir()
    with pytest.raises(IngestError, match="no FAQ or manual files"):
        load_sources([empty])


def test_duplicate_ids_across_files(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text('[{"id":"same","question":"Q","answer":"A"}]', encoding="utf-8")
    (tmp_path / "b.json").write_text('[{"id":"same","question":"Q2","answer":"B"}]', encoding="utf-8")
    with pytest.raises(IngestError, match=r"duplicate id 'same' \(first seen in .*a.json\)"):
        load_sources([tmp_path])


def test_manual_without_text(tmp_path: Path) -> None:
    f = tmp_path / "x.html"
    f.write_text("<html><body><nav>menu</nav></body></html>", encoding="utf-8")
    with pytest.raises(IngestError, match="no text"):
        load_sources([f])


DEMO = Path(__file__).resolve().parents[2] / "demo" / "kb"


def test_pdf_manual_keeps_headings_and_joins_wrapped_lines() -> None:
    [doc] = load_sources([DEMO / "manuals" / "service-terms-summary.pdf"], root=DEMO)
    manual = doc.payload
    assert isinstance(manual, Manual) and manual.title == "ご利用ガイド:料金・解約・補償"
    by_path = {s.heading_path[-1]: s.text for s in manual.sections}
    assert "4-1. 解約" in by_path and "解約金は0円です。" in by_path["4-1. 解約"]
    assert "主な内容をまとめたものです" in manual.sections[0].text  # a line wrapped mid-word is rejoined
    assert (
        "・データ容量を使い切ると" in by_path["1-1. データ容量について"]
    )  # bullet glyphs stay with their line


def test_demo_knowledge_base_loads() -> None:
    docs = load_sources([DEMO], root=DEMO)
    faqs = [d for d in docs if d.kind == "faq"]
    assert len([d for d in faqs if d.payload.language == "ja"]) >= 60  # type: ignore[union-attr]
    assert len([d for d in faqs if d.payload.language == "en"]) >= 15  # type: ignore[union-attr]
    assert {d.path.rsplit(".", 1)[-1] for d in docs if d.kind == "manual"} == {"md", "html", "pdf"}
