"""Build demo/kb/manuals/service-terms-summary.pdf from service-terms-summary.md.

The Markdown subset understood here is what the source uses: ``#``/``##``/``###`` headings,
paragraphs, ``-`` bullet lists, ``1.`` numbered lists and ``|`` tables.

Needs (only to rebuild the PDF; the project does not need them at run time):
    pip install reportlab            # tested with reportlab 5.1.0
    apt-get install -y fonts-ipafont-gothic

A TrueType CJK font is embedded (subset) so that the text extracts as correct Unicode, e.g. with
pypdf. reportlab's built-in CID fonts (HeiseiKakuGo-W5) are not embedded and do not extract reliably.

Usage: python demo/kb/manuals/src/make_pdf.py [--font PATH_TO_TTF]
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from xml.sax.saxutils import escape

from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.platypus import ListFlowable, ListItem, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

HERE = Path(__file__).resolve().parent
SRC = HERE / "service-terms-summary.md"
OUT = HERE.parent / "service-terms-summary.pdf"

# TrueType (glyf) fonts only: reportlab cannot embed CFF-based OpenType such as Noto Sans CJK .otf/.ttc.
FONT_CANDIDATES = (
    "/usr/share/fonts/opentype/ipafont-gothic/ipag.ttf",
    "/usr/share/fonts/truetype/fonts-japanese-gothic.ttf",
    "/usr/share/fonts/truetype/ipafont-gothic/ipag.ttf",
)
FONT = "JPGothic"


def find_font(explicit: str | None) -> str:
    for p in (
        ([explicit] if explicit else []) + [os.environ.get("MADOGUCHI_PDF_FONT", "")] + list(FONT_CANDIDATES)
    ):
        if p and Path(p).is_file():
            return p
    raise SystemExit(
        "No Japanese TrueType font found: apt-get install -y fonts-ipafont-gothic, or pass --font"
    )


def styles() -> dict[str, ParagraphStyle]:
    base = {"fontName": FONT, "wordWrap": "CJK"}
    head = {**base, "keepWithNext": 1}
    return {
        "h1": ParagraphStyle(
            "h1", fontSize=20, leading=28, spaceAfter=8, textColor=colors.HexColor("#0b4f8a"), **head
        ),
        "h2": ParagraphStyle(
            "h2",
            fontSize=15,
            leading=22,
            spaceBefore=12,
            spaceAfter=6,
            textColor=colors.HexColor("#0b4f8a"),
            **head,
        ),
        "h3": ParagraphStyle("h3", fontSize=12, leading=18, spaceBefore=8, spaceAfter=4, **head),
        "body": ParagraphStyle("body", fontSize=10, leading=16, spaceAfter=6, **base),
        "cell": ParagraphStyle("cell", fontSize=9, leading=13, **base),
    }


def para(text: str, style: ParagraphStyle) -> Paragraph:
    return Paragraph(escape(text), style)


def build_story(md: str, st: dict[str, ParagraphStyle]) -> list:
    story: list = []
    lines = md.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        if not line:
            i += 1
            continue
        m = re.match(r"^(#{1,3})\s+(.*)$", line)
        if m:
            story.append(para(m.group(2), st[f"h{len(m.group(1))}"]))
            i += 1
            continue
        if line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
                if not all(re.fullmatch(r":?-{3,}:?", c) for c in cells):
                    rows.append([para(c, st["cell"]) for c in cells])
                i += 1
            table = Table(rows, hAlign="LEFT", colWidths=None, repeatRows=1)
            table.setStyle(
                TableStyle(
                    [
                        ("GRID", (0, 0), (-1, -1), 0.5, colors.grey),
                        ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e6eef6")),
                        ("VALIGN", (0, 0), (-1, -1), "TOP"),
                    ]
                )
            )
            story += [table, Spacer(1, 6)]
            continue
        list_match = re.match(r"^(-|\d+\.)\s+", line)
        if list_match:
            numbered = list_match.group(1) != "-"
            items = []
            while i < len(lines) and re.match(r"^(-|\d+\.)\s+", lines[i]):
                items.append(ListItem(para(re.sub(r"^(-|\d+\.)\s+", "", lines[i].rstrip()), st["body"])))
                i += 1
            story.append(
                ListFlowable(
                    items,
                    bulletType="1" if numbered else "bullet",
                    start=None if numbered else "•",
                    bulletFormat="%s." if numbered else None,
                    bulletFontName=FONT,
                    bulletFontSize=9,
                    leftIndent=14,
                )
            )
            continue
        buf = [line]
        i += 1
        while i < len(lines) and lines[i].strip() and not re.match(r"^(#|\||-\s|\d+\.\s)", lines[i]):
            buf.append(lines[i].rstrip())
            i += 1
        story.append(para("".join(buf), st["body"]))
    return story


class NumberedDoc(SimpleDocTemplate):
    """Draws the page number after the page's content, so text extraction yields it last, not first."""

    def afterPage(self) -> None:
        self.canv.setFont(FONT, 8)
        self.canv.drawRightString(A4[0] - 20 * mm, 12 * mm, f"{self.page}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--font", help="path to a Japanese TrueType font (.ttf)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    pdfmetrics.registerFont(TTFont(FONT, find_font(args.font)))  # reportlab subsets TTFs on embed
    st = styles()
    md = SRC.read_text(encoding="utf-8")
    title = md.splitlines()[0].lstrip("# ").strip()

    doc = NumberedDoc(
        args.out,
        pagesize=A4,
        leftMargin=20 * mm,
        rightMargin=20 * mm,
        topMargin=18 * mm,
        bottomMargin=20 * mm,
        title=title,
        author="ソラモバイル（架空・デモ用）",
        subject="Madoguchi demo knowledge base",
        lang="ja-JP",
        invariant=1,
    )
    doc.build(build_story(md, st))
    print(f"wrote {args.out} ({Path(args.out).stat().st_size} bytes)")


if __name__ == "__main__":
    main()
