"""Prompt templates: versioned jinja2 files rendered with StrictUndefined.

A template's ``version`` is a hash of its text, stored with every generated answer so that a change
of wording is visible in evaluation runs. The ``data`` filter marks customer (or knowledge-base)
text as data: it cannot close the tags that delimit it, so it cannot pose as instructions.

Errors: ``PromptNotFoundError``; a missing variable raises ``jinja2.UndefinedError`` (StrictUndefined).
This package imports nothing from the others (it is a leaf).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

PROMPTS_DIR = Path(__file__).parent
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class PromptNotFoundError(FileNotFoundError):
    """No template file of that name in the prompts directory."""


def as_data(value: object) -> str:
    """Text made safe to sit between delimiter tags: no tag brackets, quotes or control characters."""
    text = _CONTROL.sub("", str(value))
    return text.replace("<", "＜").replace(">", "＞").replace('"', "＂")


def _environment(directory: Path) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(directory),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # plain-text prompts; the ``data`` filter does the escaping that matters
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )
    env.filters["data"] = as_data
    return env


@dataclass(frozen=True)
class PromptTemplate:
    """One template file; ``version`` is the first 12 hex digits of the SHA-256 of its text."""

    name: str
    source: str
    version: str
    _template: jinja2.Template = field(repr=False, compare=False)

    def render(self, **variables: Any) -> str:
        """The prompt text; a variable the template uses but is not given raises ``UndefinedError``."""
        return self._template.render(**variables).strip() + "\n"


@cache
def _env_for(directory: Path) -> jinja2.Environment:
    return _environment(directory)


def load_prompt(name: str, directory: Path = PROMPTS_DIR) -> PromptTemplate:
    """Load ``<name>.j2`` (e.g. ``answer.system``) from the prompts directory."""
    path = directory / f"{name}.j2"
    if not path.is_file():
        raise PromptNotFoundError(f"no prompt template {name!r} at {path}")
    source = path.read_text(encoding="utf-8")
    version = hashlib.sha256(source.encode("utf-8")).hexdigest()[:12]
    return PromptTemplate(name, source, version, _env_for(directory).from_string(source))


@dataclass(frozen=True)
class PromptPair:
    """A task's system and user templates (``<stem>.system.j2``, ``<stem>.user.j2``).

    ``version`` names the pair: it changes when either template changes.
    """

    system: PromptTemplate
    user: PromptTemplate

    @property
    def version(self) -> str:
        """A combined version: changes when either template changes."""
        return hashlib.sha256((self.system.version + self.user.version).encode()).hexdigest()[:12]

    @classmethod
    def load(cls, stem: str, directory: Path = PROMPTS_DIR) -> PromptPair:
        """``<stem>.system.j2`` and ``<stem>.user.j2`` from ``directory`` (answer, suggest, summary)."""
        return cls(load_prompt(f"{stem}.system", directory), load_prompt(f"{stem}.user", directory))
