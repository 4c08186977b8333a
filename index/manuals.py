"""Read manuals (Markdown, HTML, PDF, plain text) into sections that keep their heading paths."""

from __future__ import annotations

import re
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from bs4 import BeautifulSoup, Tag
from pypdf import PdfReader
from pypdf.errors import PdfReadError

from index.documents import Manual, Section
from index.readfile import IngestError, read_text
from index.textja import detect_language, normalize

_MD_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_FRONT_MATTER = re.compile(r"\A---\n(.*?)\n---\n", re.S)
_BOILERPLATE_TAGS = ["script", "style", "nav", "footer", "header", "noscript", "template", "form", "aside"]
_BLOCK_TAGS = ["h1", "h2", "h3", "h4", "h5", "h6", "p", "li", "pre", "blockquote", "tr", "dt", "dd"]


def manual_id(path: Path, root: Path | None) -> str:
    """A stable id for a manual: its path relative to the knowledge-base root, without suffix."""
    rel = path.relative_to(root) if root and path.is_relative_to(root) else Path(path.name)
    return "manual:" + rel.with_suffix("").as_posix()


def read_manual(path: Path, root: Path | None = None) -> Manual:
    """Read a manual file into a ``Manual`` with sections; raise ``IngestError`` when it has no text."""
    suffix = path.suffix.lower()
    meta: dict[str, str] = {}
    if suffix == ".pdf":
        title, sections = _pdf_sections(path)
    else:
        text = read_text(path)
        if suffix in {".md", ".markdown"}:
            text, meta = _front_matter(text)
            title, sections = _markdown_sections(text, path.stem)
        elif suffix in {".html", ".htm"}:
            title, sections = _html_sections(text, path.stem)
        else:
            title, sections = _text_sections(text, path.stem)
    sections = [s for s in sections if s.text.strip()]
    if not sections:
        raise IngestError(path, "the manual has no text")
    sample = " ".join(s.text for s in sections[:5])
    updated = meta.get("updated_at") or datetime.fromtimestamp(path.stat().st_mtime, UTC).date().isoformat()
    return Manual(
        id=meta.get("id") or manual_id(path, root),
        title=meta.get("title") or title,
        sections=tuple(sections),
        url=meta.get("url"),
        updated_at=updated,
        category=meta.get("category"),
        language=meta.get("language") or detect_language(sample),
    )


def _front_matter(text: str) -> tuple[str, dict[str, str]]:
    m = _FRONT_MATTER.match(text)
    if not m:
        return text, {}
    meta = {}
    for line in m.group(1).splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            meta[k.strip()] = v.strip().strip("\"'")
    return text[m.end() :], meta


def _markdown_sections(text: str, fallback_title: str) -> tuple[str, list[Section]]:
    path_stack: list[tuple[int, str]] = []
    sections: list[Section] = []
    buf: list[str] = []
    title = ""
    in_fence = False

    def flush() -> None:
        body = "\n".join(buf).strip()
        if body:
            sections.append(Section(tuple(h for _, h in path_stack), body))
        buf.clear()

    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
        m = None if in_fence else _MD_HEADING.match(line)
        if m:
            flush()
            level, heading = len(m.group(1)), normalize(m.group(2)).strip()
            title = title or (heading if level == 1 else "")
            while path_stack and path_stack[-1][0] >= level:
                path_stack.pop()
            path_stack.append((level, heading))
        else:
            buf.append(line)
    flush()
    title = title or fallback_title
    return title, [_with_title(s, title) for s in sections]


def _with_title(section: Section, title: str) -> Section:
    if section.heading_path[:1] == (title,):
        return section
    return Section((title, *section.heading_path), section.text)


def _html_sections(html: str, fallback_title: str) -> tuple[str, list[Section]]:
    soup = BeautifulSoup(html, "html.parser")
    for tag in soup(_BOILERPLATE_TAGS):
        tag.decompose()
    title_tag = soup.find("h1") or soup.find("title")
    title = normalize(title_tag.get_text(" ", strip=True)) if title_tag else fallback_title
    body = soup.find("main") or soup.find("article") or soup.body or soup
    path_stack: list[tuple[int, str]] = []
    sections: list[Section] = []
    buf: list[str] = []

    def flush() -> None:
        if buf:
            sections.append(Section(tuple(h for _, h in path_stack), "\n".join(buf)))
        buf.clear()

    for el in body.find_all(_BLOCK_TAGS):
        assert isinstance(el, Tag)
        if el.find_parent(_BLOCK_TAGS):  # nested block: its text is part of the outer one
            continue
        name = el.name or ""
        if name[0] == "h" and name[1:].isdigit():
            flush()
            level = int(name[1:])
            while path_stack and path_stack[-1][0] >= level:
                path_stack.pop()
            path_stack.append((level, normalize(el.get_text(" ", strip=True))))
        else:
            text = _block_text(el, name)
            if text:
                buf.append(text)
    flush()
    return title, [_with_title(s, title) for s in sections]


def _block_text(el: Tag, name: str) -> str:
    """A block's text: a table row's cells joined by " | ", a list item bulleted, else its text."""
    if name == "tr":
        cells = [c.get_text(" ", strip=True) for c in el.find_all(["th", "td"])]
        return " | ".join(cells) if any(cells) else ""
    text = el.get_text(" ", strip=True)
    return ("・" if name == "li" and text else "") + text


def _text_sections(text: str, fallback_title: str) -> tuple[str, list[Section]]:
    lines = [ln for ln in text.splitlines()]
    first = next((ln.strip() for ln in lines if ln.strip()), fallback_title)
    title = first if len(first) <= 80 else fallback_title
    return title, [Section((title,), text.strip())]


def _pdf_sections(path: Path) -> tuple[str, list[Section]]:
    """Sections of a PDF: lines set in a font larger than the body text are headings."""
    try:
        reader = PdfReader(path)
        lines = _pdf_lines(reader)
    except (PdfReadError, OSError, ValueError) as exc:
        raise IngestError(path, f"cannot read the PDF: {exc}") from exc
    if not lines:
        raise IngestError(path, "the PDF has no extractable text (scanned images need OCR first)")
    sizes: Counter[int] = Counter()
    for size, text in lines:
        sizes[round(size)] += len(text)  # the body is the size most characters are set in
    body_size = sizes.most_common(1)[0][0]
    heading_sizes = sorted({round(s) for s, _ in lines if round(s) > body_size + 0.5}, reverse=True)
    level_of = {s: i + 1 for i, s in enumerate(heading_sizes)}
    stack: list[tuple[int, str]] = []
    sections: list[Section] = []
    buf: list[str] = []
    for size, text in lines:
        level = level_of.get(round(size))
        if level is None:
            buf.append(text)
            continue
        if buf:
            sections.append(Section(tuple(h for _, h in stack), _join_wrapped(buf)))
            buf = []
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, text))
    if buf:
        sections.append(Section(tuple(h for _, h in stack), _join_wrapped(buf)))
    title = next((t for s, t in lines if level_of.get(round(s)) == 1), path.stem)
    return title, [_with_title(s, title) for s in sections]


def _join_wrapped(lines: list[str]) -> str:
    """Join PDF lines: a line that does not end a sentence or a list item was wrapped by the layout,
    so it continues on the next line (with no space in Japanese, one space in English)."""
    out = ""
    prev = ""
    for line in lines:
        if re.fullmatch(r"\d{1,3}", line):  # a page number
            continue
        if not out:
            out = line
        elif len(line) < 16 and line.endswith("。") and out[-1] not in "。！？":  # a wrapped sentence end
            out += line
        elif len(line) < 16 or len(prev) < 16:  # table cells and short labels: keep them apart
            out += " " + line
        elif out[-1] in "。！？!?:：)）" or line[:1] in "・-*•●" or line[:1].isdigit() and "." in line[:4]:
            out += "\n" + line
        elif out[-1].isascii() and line[:1].isascii():
            out += " " + line
        else:
            out += line
        prev = line
    return out


def _pdf_lines(reader: PdfReader) -> list[tuple[float, str]]:
    """(font size, text) per visual line, in reading order, over all pages."""
    out: list[tuple[float, str]] = []
    for page in reader.pages:
        frags: list[tuple[float, str]] = []

        def visit(
            text: str, cm: list[float], tm: list[float], font: object, size: float,
            frags: list[tuple[float, str]] = frags,
        ) -> None:
            scale = abs(tm[3] * cm[3]) or 1.0
            frags.append((size * scale, text))

        page.extract_text(visitor_text=visit)
        cur_size, cur = 0.0, ""
        for size, text in frags:
            for i, piece in enumerate(text.split("\n")):
                if i > 0 and cur.strip():
                    out.append((cur_size, normalize(cur).strip()))
                    cur = ""
                if piece:
                    cur_size = max(cur_size, size) if cur.strip() else size
                    cur += piece
        if cur.strip():
            out.append((cur_size, normalize(cur).strip()))
    return _attach_bullets(out)


def _attach_bullets(lines: list[tuple[float, str]]) -> list[tuple[float, str]]:
    """A bullet glyph set on a line of its own belongs to the line after it."""
    out: list[tuple[float, str]] = []
    pending = ""
    for size, text in lines:
        if text in {"•", "●", "・", "-", "*", "◦", "■"}:
            pending = "・"
            continue
        out.append((size, pending + text))
        pending = ""
    return out
