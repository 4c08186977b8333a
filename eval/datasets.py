"""Evaluation datasets: Hugging Face ``datasets`` with explicit features, saved with a fingerprint.

Every replayable example (one customer turn with what a right reply needs) has the same features,
``EXAMPLE_FEATURES``, whatever it came from:
- golden sets we write in YAML (``eval/golden/*.yaml``; ``golden_dataset``);
- public benchmark files in the formats of ``../shared/data``: LocalgovFAQ (``localgovfaq_dataset``),
  CLINC150 (``clinc150_dataset``), doc2dial (``doc2dial_dataset``);
- the product's own records (resolved chats, thumbs and surveys, suggested-reply use): see
  ``eval.records``.

The fingerprint is a SHA-256 of the features and the rows in canonical JSON: the same files give the
same fingerprint on any machine, and any change to an example changes it. MLflow runs record it.

Errors: ``DatasetError`` (a file is missing or not in the expected format).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from datasets import Dataset, Features, List, Value

from index.textja import detect_language

SCHEMA_VERSION = 1
FINGERPRINT_FILE = "madoguchi_dataset.json"
REPO = Path(__file__).resolve().parents[1]

EXAMPLE_FEATURES = Features(
    {
        "id": Value("string"),
        "source": Value("string"),  # golden | localgovfaq | clinc150 | doc2dial | chats
        "language": Value("string"),
        "history": List({"role": Value("string"), "text": Value("string")}),  # oldest first
        "question": Value("string"),
        "expected_sources": List(Value("string")),  # source ids whose answer is right; empty: none
        "expected_grades": List(Value("int32")),  # graded relevance of each expected source
        "should_escalate": Value("bool"),
        "expected_reason": Value("string"),  # the escalation reason the data names ("" if none)
        "reference_answer": Value("string"),
        "reference_contexts": List(Value("string")),
        "group": Value("string"),  # intent, dialogue, category: what examples share
    }
)


class DatasetError(ValueError):
    """A dataset file is missing or not in the expected format."""


@dataclass(frozen=True)
class BuiltDataset:
    """A dataset with its name and content fingerprint."""

    name: str
    dataset: Dataset
    fingerprint: str

    def __len__(self) -> int:
        return len(self.dataset)


def example(
    id: str,  # noqa: A002 - the dataset column's name
    question: str,
    source: str,
    *,
    history: Sequence[tuple[str, str]] = (),
    expected_sources: Sequence[str] = (),
    expected_grades: Sequence[int] | None = None,
    should_escalate: bool = False,
    expected_reason: str = "",
    reference_answer: str = "",
    reference_contexts: Sequence[str] = (),
    group: str = "",
    language: str | None = None,
) -> dict[str, Any]:
    """One row of ``EXAMPLE_FEATURES``."""
    grades = list(expected_grades) if expected_grades is not None else [1] * len(expected_sources)
    if len(grades) != len(expected_sources):
        raise ValueError(f"example {id!r}: {len(grades)} grades for {len(expected_sources)} expected sources")
    return {
        "id": id,
        "source": source,
        "language": language or detect_language(question),
        "history": [{"role": r, "text": t} for r, t in history],
        "question": question,
        "expected_sources": list(expected_sources),
        "expected_grades": grades,
        "should_escalate": should_escalate,
        "expected_reason": expected_reason,
        "reference_answer": reference_answer,
        "reference_contexts": list(reference_contexts),
        "group": group,
    }


def fingerprint(rows: Iterable[Mapping[str, Any]], features: Features = EXAMPLE_FEATURES) -> str:
    """SHA-256 of the schema version, the features and the rows (canonical JSON), in hex."""
    h = hashlib.sha256()
    h.update(f"v{SCHEMA_VERSION}\n".encode())
    h.update(json.dumps(features.to_dict(), sort_keys=True).encode())
    for row in rows:
        h.update(b"\n")
        h.update(json.dumps(row, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8"))
    return h.hexdigest()


def build_dataset(
    name: str, rows: Sequence[Mapping[str, Any]], features: Features = EXAMPLE_FEATURES
) -> BuiltDataset:
    """A dataset of ``rows`` with explicit ``features`` and its fingerprint."""
    if not rows:
        raise DatasetError(f"dataset {name!r} has no examples")
    ids = [r["id"] for r in rows if "id" in r]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DatasetError(f"dataset {name!r}: example id {dup!r} appears more than once")
    ds = Dataset.from_list([dict(r) for r in rows], features=features)
    return BuiltDataset(name, ds, fingerprint(ds.to_list(), features))


def save_dataset(built: BuiltDataset, directory: Path) -> None:
    """Save with ``save_to_disk`` and write the fingerprint beside it."""
    built.dataset.save_to_disk(str(directory))
    meta = {
        "name": built.name,
        "fingerprint": built.fingerprint,
        "rows": len(built),
        "schema": SCHEMA_VERSION,
    }
    (directory / FINGERPRINT_FILE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")


def load_dataset_dir(directory: Path) -> BuiltDataset:
    """Load a saved dataset; ``DatasetError`` if it is missing or its rows no longer match the fingerprint."""
    meta_path = directory / FINGERPRINT_FILE
    if not meta_path.is_file():
        raise DatasetError(f"no saved Madoguchi dataset at {directory} ({FINGERPRINT_FILE} missing)")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    ds = Dataset.load_from_disk(str(directory))
    actual = fingerprint(ds.to_list(), ds.features)
    if actual != meta.get("fingerprint"):
        raise DatasetError(f"{directory}: rows do not match the saved fingerprint (changed on disk?)")
    return BuiltDataset(str(meta.get("name", directory.name)), ds, actual)


def sample_rows(rows: Sequence[dict[str, Any]], n: int | None, seed: int = 0) -> list[dict[str, Any]]:
    """A seeded random subset of ``n`` rows in their original order (all rows when ``n`` is None)."""
    if n is None or n >= len(rows):
        return list(rows)
    if n < 1:
        raise ValueError(f"sample size must be at least 1, got {n!r}")
    keep = np.sort(np.random.default_rng(seed).choice(len(rows), size=n, replace=False))
    return [rows[i] for i in keep]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not valid UTF-8 JSON ({exc})") from exc


# ---------------------------------------------------------------------------------------------------
# Golden sets (YAML)
# ---------------------------------------------------------------------------------------------------


def read_golden(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The golden file's header (name, kb, ...) and its rows.

    Format: ``name``, ``kb`` (knowledge sources, relative to the repository), ``examples``: a list of
    ``{id, q, expect: [source ids]}`` or ``{id, q, escalate: true, reason: code}``; optional
    ``history: [[role, text], ...]``, ``answer`` (reference text), ``lang``, ``group``.
    """
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"golden set not found: {path}") from None
    except yaml.YAMLError as exc:
        raise DatasetError(f"{path}: not valid YAML ({exc})") from exc
    items = data.get("examples") if isinstance(data, dict) else None
    if not isinstance(items, list) or not items:
        raise DatasetError(f"{path}: expected a mapping with a non-empty 'examples' list")
    rows = [_golden_row(path, i, item) for i, item in enumerate(items)]
    header = {k: v for k, v in data.items() if k != "examples"}
    return header, rows


def _golden_row(path: Path, i: int, item: Any) -> dict[str, Any]:
    if not isinstance(item, dict) or not str(item.get("q") or "").strip() or not item.get("id"):
        raise DatasetError(f"{path}: example {i} needs an 'id' and a non-empty 'q'")
    expect = [str(s) for s in item.get("expect") or []]
    escalate = bool(item.get("escalate", False))
    if bool(expect) == escalate:
        raise DatasetError(
            f"{path}: example {item['id']!r} needs either 'expect' (source ids) or 'escalate: true'"
        )
    history = [(str(r), str(t)) for r, t in item.get("history") or []]
    return example(
        str(item["id"]),
        str(item["q"]).strip(),
        "golden",
        history=history,
        expected_sources=expect,
        should_escalate=escalate,
        expected_reason=str(item.get("reason") or ""),
        reference_answer=str(item.get("answer") or ""),
        group=str(item.get("group") or ""),
        language=item.get("lang"),
    )


def golden_dataset(path: Path) -> BuiltDataset:
    """A golden YAML set as a dataset."""
    header, rows = read_golden(path)
    return build_dataset(str(header.get("name") or path.stem), rows)


# ---------------------------------------------------------------------------------------------------
# Public benchmarks (../shared/data formats)
# ---------------------------------------------------------------------------------------------------


def localgovfaq_dataset(
    directory: Path, split: str = "dev", *, sample: int | None = None, seed: int = 0
) -> BuiltDataset:
    """LocalgovFAQ queries with graded judgements (grade >= 1 relevant); no relevant entry: escalate."""
    queries = _read_json(directory / f"queries.{split}.json")
    qrels = _read_json(directory / f"qrels.{split}.json")
    if not isinstance(queries, dict) or not isinstance(qrels, dict):
        raise DatasetError(f"{directory}: queries and qrels must be JSON objects keyed by query id")
    rows = []
    for qid, judged in qrels.items():
        if qid not in queries:
            continue
        graded = ((d, int(g)) for d, g in judged.items() if int(g) >= 1)
        relevant = sorted(graded, key=lambda x: (-x[1], x[0]))
        rows.append(
            example(
                f"localgovfaq-{qid}",
                str(queries[qid]),
                "localgovfaq",
                language="ja",
                expected_sources=[d for d, _ in relevant],
                expected_grades=[g for _, g in relevant],
                should_escalate=not relevant,
            )
        )
    return build_dataset(f"localgovfaq-{split}", sample_rows(rows, sample, seed))


def clinc150_dataset(
    path: Path, split: str = "test", *, sample: int | None = None, seed: int = 0
) -> BuiltDataset:
    """CLINC150 ``split`` + ``oos_<split>``: in-scope utterances expect their intent, OOS escalates."""
    data = _read_json(path)
    if not isinstance(data, dict) or split not in data or f"oos_{split}" not in data:
        raise DatasetError(f"{path}: expected the splits {split!r} and 'oos_{split}'")
    rows = []
    for part in (split, f"oos_{split}"):
        for n, pair in enumerate(data[part]):
            if not (isinstance(pair, list) and len(pair) == 2):
                raise DatasetError(f"{path}: split {part!r} row {n} is not [utterance, intent]")
            text, intent = str(pair[0]), str(pair[1])
            oos = intent == "oos"
            rows.append(
                example(
                    f"clinc150-{part}-{n}",
                    text,
                    "clinc150",
                    language="en",
                    group=intent,
                    expected_sources=[] if oos else [intent],
                    should_escalate=oos,
                )
            )
    return build_dataset(f"clinc150-{split}", sample_rows(rows, sample, seed))


def _doc2dial_history(turns: Sequence[str]) -> list[tuple[str, str]]:
    """``history_recent_first`` without the last user turn, oldest first, as (role, text)."""
    out = []
    for entry in reversed(turns[1:]):
        speaker, _, text = entry.partition(":")
        out.append(("customer" if speaker == "user" else "operator", text.strip()))
    return out


def doc2dial_dataset(directory: Path, *, sample: int | None = None, seed: int = 0) -> BuiltDataset:
    """doc2dial agent turns: the user's last turn, the dialogue so far, the gold document and grounding."""
    path = directory / "turns.jsonl"
    if not path.is_file():
        raise DatasetError(f"file not found: {path}")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        try:
            t = json.loads(line)
            grounding = str(t["gold_grounding_text"]).strip()
            rows.append(
                example(
                    f"doc2dial-{t['id']}",
                    str(t["last_user_utterance"]).strip(),
                    "doc2dial",
                    language="en",
                    history=_doc2dial_history(t["history_recent_first"]),
                    expected_sources=[str(t["gold_doc_id"])],
                    reference_answer=grounding,
                    reference_contexts=[grounding],
                    group=str(t["dial_id"]),
                )
            )
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DatasetError(f"{path}: line {n + 1} is not a doc2dial turn ({exc})") from exc
    return build_dataset("doc2dial", sample_rows(rows, sample, seed))
