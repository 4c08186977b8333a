"""Shared by the benchmarks: the LocalgovFAQ corpus from ../shared/data, as chunks and as texts."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_key, _value)

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "localgovfaq"


def require_data() -> Path:
    """The LocalgovFAQ folder, or exit with a clear message."""
    if not (DATA / "corpus.json").is_file():
        sys.exit(f"benchmark data not found: {DATA}/corpus.json (../shared/data is absent)")
    return DATA


def corpus() -> dict[str, str]:
    """{doc_id: 'Question: ...\\nAnswer: ...'}."""
    return dict(json.loads((require_data() / "corpus.json").read_text(encoding="utf-8")))


def queries() -> list[str]:
    """The dev queries' texts."""
    return list(json.loads((require_data() / "queries.dev.json").read_text(encoding="utf-8")).values())


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation."""
    import numpy as np

    return float(np.percentile(np.asarray(values), q))
