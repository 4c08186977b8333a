"""Test-wide setup: offline switches before any library import, and shared fixtures."""

from __future__ import annotations

import os

# Keep every library off the network; these must be set before the libraries are imported.
for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "RAGAS_DO_NOT_TRACK": "true",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_key, _value)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SMALL_KB = REPO / "tests" / "data" / "kb_small"


def model_cache_dir() -> Path:
    """Where the converted default model lives: converted once per machine, shared by test runs."""
    return Path(os.environ.get("MADOGUCHI_CACHE_DIR", "~/.cache/madoguchi")).expanduser()


@pytest.fixture(scope="session")
def embedder():  # type: ignore[no-untyped-def]
    """The product's default embedder (the packaged multilingual-e5-small), loaded once per session."""
    from index.embed import load_embedder

    return load_embedder("default", model_cache_dir())


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or skip: the public evaluation sets are not part of a user's clone."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"public evaluation data not found at {SHARED_DATA} (../shared/data is absent)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def cached_embedder(embedder):  # type: ignore[no-untyped-def]
    """The default embedder behind the product's on-disk embedding cache (the one the CLI uses).

    The quality tier embeds thousands of public-benchmark texts; like ``madoguchi eval``, it embeds each
    text once per machine and reads it from the cache afterwards.
    """
    from index.cache import CachedEmbedder, EmbeddingCache

    return CachedEmbedder(embedder, EmbeddingCache(model_cache_dir() / "embeddings.sqlite"))
