"""Reading source files: text decoding (UTF-8 or Shift_JIS) and the error every reader raises."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


class IngestError(ValueError):
    """A source file cannot be ingested; the message names the file and the line."""

    def __init__(self, path: Path | str, message: str, line: int | None = None) -> None:
        self.path = str(path)
        self.line = line
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")


def read_text(path: Path) -> str:
    """Decode a text file: UTF-8 (with or without BOM), or Shift_JIS/CP932 when the bytes say so."""
    raw = path.read_bytes()
    if not raw.strip():
        raise IngestError(path, "the file is empty")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        utf8_error = exc
    try:
        text = raw.decode("cp932")
    except UnicodeDecodeError:
        line = raw[: utf8_error.start].count(b"\n") + 1
        raise IngestError(
            path, "not valid UTF-8 and not Shift_JIS (CP932); re-save the file as UTF-8", line
        ) from utf8_error
    log.warning("%s: not UTF-8; decoded as Shift_JIS (CP932)", path)
    return text
