"""Read FAQ entries and manuals from files into ``SourceDoc`` values.

FAQ entries: CSV, JSON (a list or ``{"entries": [...]}``), JSONL, YAML, and Markdown files whose name
starts with ``faq`` (each ``## `` heading is a question, its body the answer, an optional
``<!-- id: ...; category: ...; url: ...; updated_at: ...; variations: a | b -->`` line carries metadata).
Manuals: Markdown, HTML, PDF and plain text, split into sections by their headings.

Learned question variations: a file named ``learned_variations.jsonl`` (one ``{"faq_id": ...,
"variation": ...}`` per line, written by the review queue in ``assistant.voc``) adds variations to the
FAQ entries of its folder and the folders below it; a line naming an entry that no longer exists is
skipped. Keeping them apart from the team's own files means a rebuild keeps them and nobody's CSV or
YAML is ever rewritten by a program.

Every problem raises ``IngestError`` naming the file and, where there is one, the line. Nothing is
returned for a file set with any error, so a caller never writes a half-read knowledge base.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import date, datetime
from pathlib import Path
from typing import Any

import yaml

from index.documents import FaqEntry, Manual, SourceDoc, content_hash
from index.manuals import read_manual
from index.readfile import IngestError, read_text
from index.textja import detect_language, normalize

log = logging.getLogger(__name__)

FAQ_SUFFIXES = {".csv", ".json", ".jsonl", ".yaml", ".yml"}
MANUAL_SUFFIXES = {".md", ".markdown", ".html", ".htm", ".pdf", ".txt"}
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$")
_FAQ_FIELDS = {"id", "question", "answer", "variations", "category", "url", "updated_at", "language"}
LEARNED_VARIATIONS = "learned_variations.jsonl"


@dataclass(frozen=True)
class _Located:
    entry: FaqEntry
    line: int | None


# ---------------------------------------------------------------------------------------------- files


def discover(paths: Iterable[Path]) -> list[Path]:
    """Expand directories into the supported files below them, sorted; reject unknown file types."""
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out.extend(
                f
                for f in sorted(p.rglob("*"))
                if f.is_file()
                and f.suffix.lower() in FAQ_SUFFIXES | MANUAL_SUFFIXES
                and "src" not in f.relative_to(p).parts[:-1]
                and f.name.lower() not in ("readme.md", LEARNED_VARIATIONS)
            )
        elif p.is_file():
            if p.name == LEARNED_VARIATIONS:
                continue  # an overlay, applied by load_sources
            if p.suffix.lower() not in FAQ_SUFFIXES | MANUAL_SUFFIXES:
                raise IngestError(
                    p,
                    f"unknown file type {p.suffix!r}; expected one of "
                    f"{sorted(FAQ_SUFFIXES | MANUAL_SUFFIXES)}",
                )
            out.append(p)
        else:
            raise IngestError(p, "no such file or directory")
    return out


def load_sources(paths: Iterable[Path], root: Path | None = None) -> list[SourceDoc]:
    """Read every file below ``paths`` into source documents; raise on the first problem.

    ``root`` makes manual ids relative paths (stable when the knowledge base moves).
    """
    files = discover(paths)
    if not files:
        raise IngestError(", ".join(str(p) for p in paths), "no FAQ or manual files found")
    docs: list[SourceDoc] = []
    seen: dict[str, str] = {}
    for f in files:
        for doc in _load_file(f, root):
            if doc.id in seen:
                raise IngestError(f, f"duplicate id {doc.id!r} (first seen in {seen[doc.id]})")
            seen[doc.id] = doc.path
            docs.append(doc)
    return apply_learned_variations(docs, read_learned_variations(_overlay_files(paths, root)))


def _overlay_files(paths: Iterable[Path], root: Path | None) -> list[Path]:
    """Learned-variation files that apply: below each folder given; for a file, in its folder and
    the folders above it up to ``root``."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found.extend(sorted(p.rglob(LEARNED_VARIATIONS)))
            continue
        folder = p.resolve().parent
        top = root.resolve() if root is not None else folder
        while True:
            if (folder / LEARNED_VARIATIONS).is_file():
                found.append(folder / LEARNED_VARIATIONS)
            if folder == top or top not in folder.parents:
                break
            folder = folder.parent
    return list(dict.fromkeys(f.resolve() for f in found))


def read_learned_variations(files: Iterable[Path]) -> dict[str, list[str]]:
    """``{faq_id: [variation, ...]}`` from learned-variation files, in file and line order."""
    learned: dict[str, list[str]] = {}
    for path in files:
        for lineno, line in enumerate(read_text(path).splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise IngestError(path, f"invalid JSON: {exc.msg}", lineno) from exc
            if not isinstance(row, dict) or not all(
                isinstance(row.get(k), str) and row[k].strip() for k in ("faq_id", "variation")
            ):
                raise IngestError(path, 'each line needs non-empty "faq_id" and "variation" strings', lineno)
            learned.setdefault(row["faq_id"].strip(), []).append(normalize(row["variation"]).strip())
    return learned


def apply_learned_variations(docs: list[SourceDoc], learned: dict[str, list[str]]) -> list[SourceDoc]:
    """The documents with learned variations added to their FAQ entries (new ones only)."""
    if not learned:
        return docs
    out = []
    for doc in docs:
        entry = doc.payload
        extra = learned.get(doc.id, []) if isinstance(entry, FaqEntry) else []
        if isinstance(entry, FaqEntry) and extra:
            variations = tuple(dict.fromkeys((*entry.variations, *extra)))
            entry = replace(entry, variations=tuple(v for v in variations if v != entry.question))
            doc = faq_source(entry, doc.path)
        out.append(doc)
    return out


def _load_file(path: Path, root: Path | None) -> list[SourceDoc]:
    suffix = path.suffix.lower()
    if suffix in FAQ_SUFFIXES or (suffix in {".md", ".markdown"} and path.name.lower().startswith("faq")):
        located = list(read_faq_file(path))
        if not located:
            raise IngestError(path, "no FAQ entries in the file")
        ids: dict[str, int | None] = {}
        for item in located:
            if item.entry.id in ids:
                raise IngestError(
                    path, f"duplicate id {item.entry.id!r} (also at line {ids[item.entry.id]})", item.line
                )
            ids[item.entry.id] = item.line
        return [faq_source(item.entry, str(path)) for item in located]
    manual = read_manual(path, root)
    return [manual_source(manual, str(path))]


def faq_source(entry: FaqEntry, path: str) -> SourceDoc:
    """Wrap an FAQ entry as a source document with its change-detecting hash."""
    h = content_hash(
        entry.id,
        entry.question,
        entry.answer,
        *entry.variations,
        entry.category or "",
        entry.url or "",
        entry.updated_at or "",
        entry.language or "",
    )
    return SourceDoc(id=entry.id, kind="faq", path=path, content_hash=h, payload=entry)


def manual_source(manual: Manual, path: str) -> SourceDoc:
    """Wrap a manual as a source document with its change-detecting hash."""
    parts = [manual.id, manual.title, manual.url or "", manual.updated_at or "", manual.category or ""]
    for s in manual.sections:
        parts.extend([" > ".join(s.heading_path), s.text])
    return SourceDoc(
        id=manual.id, kind="manual", path=path, content_hash=content_hash(*parts), payload=manual
    )


# ------------------------------------------------------------------------------------------------ FAQ


def read_faq_file(path: Path) -> Iterator[_Located]:
    """Yield the FAQ entries of one file with the line each starts on."""
    suffix = path.suffix.lower()
    text = read_text(path)
    if suffix == ".csv":
        yield from _faq_csv(path, text)
    elif suffix == ".jsonl":
        yield from _faq_jsonl(path, text)
    elif suffix == ".json":
        yield from _faq_records(path, _parse_json(path, text), None)
    elif suffix in {".yaml", ".yml"}:
        yield from _faq_yaml(path, text)
    else:
        yield from _faq_markdown(path, text)


def _parse_json(path: Path, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise IngestError(path, f"invalid JSON: {exc.msg}", exc.lineno) from exc


def _faq_records(path: Path, data: Any, lines: list[int] | None) -> Iterator[_Located]:
    if isinstance(data, dict) and isinstance(data.get("entries"), list):
        data = data["entries"]
    if not isinstance(data, list):
        raise IngestError(path, 'expected a list of FAQ entries (or {"entries": [...]})')
    for i, row in enumerate(data):
        line = lines[i] if lines else None
        yield _Located(faq_entry_from_mapping(path, row, line, index=i), line)


def _faq_jsonl(path: Path, text: str) -> Iterator[_Located]:
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise IngestError(path, f"invalid JSON: {exc.msg}", lineno) from exc
        yield _Located(faq_entry_from_mapping(path, row, lineno), lineno)


def _faq_yaml(path: Path, text: str) -> Iterator[_Located]:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise IngestError(path, f"invalid YAML: {exc}", mark.line + 1 if mark else None) from exc
    lines: list[int] | None = None
    if isinstance(node, yaml.SequenceNode):
        lines = [item.start_mark.line + 1 for item in node.value]
    elif isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if key.value == "entries" and isinstance(value, yaml.SequenceNode):
                lines = [item.start_mark.line + 1 for item in value.value]
    yield from _faq_records(path, data, lines)


def _faq_csv(path: Path, text: str) -> Iterator[_Located]:
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip().lower() for h in (reader.fieldnames or [])]
    missing = {"question", "answer"} - set(header)
    if missing:
        raise IngestError(path, f"CSV header lacks column(s) {sorted(missing)}; found {header}", 1)
    reader.fieldnames = header
    for row in reader:
        lineno = reader.line_num
        if None in row:
            raise IngestError(
                path, f"row has {len(header) + len(row[None])} fields, header has {len(header)}", lineno
            )
        if all(not (v or "").strip() for v in row.values()):
            continue
        mapping: dict[str, Any] = dict(row)
        if mapping.get("variations"):
            mapping["variations"] = [v for v in str(mapping["variations"]).split("|") if v.strip()]
        yield _Located(faq_entry_from_mapping(path, mapping, lineno), lineno)


_MD_META = re.compile(r"^\s*<!--(.*?)-->\s*$", re.S)


def _faq_markdown(path: Path, text: str) -> Iterator[_Located]:
    blocks: list[tuple[int, str, list[str]]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.startswith("## "):
            blocks.append((lineno, line[3:].strip(), []))
        elif blocks:
            blocks[-1][2].append(line)
    for i, (lineno, question, body) in enumerate(blocks):
        mapping: dict[str, Any] = {"question": question}
        answer_lines = []
        for line in body:
            m = _MD_META.match(line)
            if m:
                for item in m.group(1).split(";"):
                    if ":" in item:
                        key, value = item.split(":", 1)
                        mapping[key.strip()] = value.strip()
            else:
                answer_lines.append(line)
        mapping["answer"] = "\n".join(answer_lines).strip()
        if isinstance(mapping.get("variations"), str):
            mapping["variations"] = [v for v in mapping["variations"].split("|") if v.strip()]
        mapping.setdefault("id", f"{path.stem}-{i + 1}")
        yield _Located(faq_entry_from_mapping(path, mapping, lineno), lineno)


def _as_date_text(path: Path, value: Any, line: int | None) -> str | None:
    if value in (None, ""):
        return None
    if isinstance(value, datetime):
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    text = str(value).strip()
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).date().isoformat()
    except ValueError:
        raise IngestError(path, f"updated_at {text!r} is not an ISO date (YYYY-MM-DD)", line) from None


def faq_entry_from_mapping(path: Path, row: Any, line: int | None, index: int | None = None) -> FaqEntry:
    """Validate one FAQ record and turn it into an ``FaqEntry``."""
    where = f"entry {index + 1}" if index is not None and line is None else "entry"
    if not isinstance(row, dict):
        raise IngestError(path, f"{where} is not a mapping: {row!r:.80}", line)
    unknown = set(row) - _FAQ_FIELDS
    if unknown:
        raise IngestError(path, f"{where} has unknown field(s) {sorted(unknown)}", line)
    question = normalize(str(row.get("question") or "")).strip()
    answer = str(row.get("answer") or "").strip()
    if not question or not answer:
        raise IngestError(path, f"{where} needs a non-empty question and answer", line)
    raw_id = str(row.get("id") or "").strip()
    if not raw_id:
        raise IngestError(path, f"{where} has no id", line)
    if not _ID_RE.match(raw_id):
        raise IngestError(path, f"id {raw_id!r} must be 1-128 letters, digits, '_', '-', '.', ':'", line)
    variations = row.get("variations") or []
    if isinstance(variations, str):
        variations = [variations]
    if not isinstance(variations, list):
        raise IngestError(path, f"variations of {raw_id!r} must be a list of strings", line)
    clean_vars = tuple(dict.fromkeys(normalize(str(v)).strip() for v in variations if str(v).strip()))
    language = str(row.get("language") or "").strip() or detect_language(question + answer)
    return FaqEntry(
        id=raw_id,
        question=question,
        answer=answer,
        variations=tuple(v for v in clean_vars if v != question),
        category=(str(row["category"]).strip() or None) if row.get("category") else None,
        url=(str(row["url"]).strip() or None) if row.get("url") else None,
        updated_at=_as_date_text(path, row.get("updated_at"), line),
        language=language,
    )
