"""One entry point for an encoder by configuration: engine (torch/openvino/auto), dtype, path.

``engine: auto`` picks, per CPU, the fastest candidate that stays faithful to torch fp32 on a
small built-in multilingual check set: every pooled layer the sentiment head reads keeps cosine
>= 0.999 and the committed sentiment head (when trained on this encoder) gives identical labels.
Candidates: torch fp32 (the reference, always acceptable), torch bf16 and OpenVINO bf16 on CPUs
with native bf16 (AMX or AVX512-BF16), OpenVINO fp32. The decision is cached in
``<cache>/encoders/<version>-engine/<host key>.json``, keyed by CPU model and flags, cores,
requested dtype and the library versions, so it is measured once per host (about a minute) and
a later run loads the chosen engine directly, without the bf16 probe.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from models.encoder._convert import ensure_encoder, is_complete
from models.encoder._embedder import (
    Encoder,
    EncoderDType,
    available_cores,
    cpu_identity,
    cpu_supports_bf16,
    read_version,
)
from pipelines._errors import ConfigError, ModelError

__all__ = [
    "CHECK_TEXTS",
    "ENGINES",
    "EngineChoice",
    "EngineName",
    "choose_engine",
    "load_encoder",
]

EngineName = Literal["auto", "torch", "openvino"]
ENGINES: tuple[str, ...] = get_args(EngineName)
TORCH_BATCH_SIZE = 64
_MIN_COSINE = 0.999
_CHECK_LAYERS = (4, 6, 8, 10, 12)
_DEFAULT_HEAD = Path(__file__).resolve().parents[1] / "heads" / "sentiment-e5.json"
_CHOICE_REVISION = 1
_TIMING_REPEATS = 3
CHECK_TEXTS: tuple[str, ...] = (
    "Kargo çok geç geldi ve ürün kırık çıktı, iade istiyorum.",
    "Müşteri hizmetleri çok ilgiliydi, teşekkürler!",
    "Sipariş verdim ama hâlâ bir bilgi yok.",
    "پشتیبانی خیلی سریع جواب داد و مشکل من حل شد، ممنونم.",
    "کیفیت محصول عالی بود ولی بسته‌بندی ضعیف بود",
    "سفارش شماره ۱۲۳۴ هنوز نرسیده است",
    "Livrarea a durat două săptămâni, iar produsul nu funcționează.",
    "Îmi place aplicația, dar se blochează des 👍",
    "The app keeps crashing whenever I try to upload a photo.",
    "Great service, fast delivery! Would order again.",
    "It arrived on Tuesday.",
    "Refund?? No thanks… support was useless",
    "Die Lieferung war pünktlich, aber die Verpackung war beschädigt.",
    "El producto llegó roto y nadie responde.",
    "ok",
    "",
)


@dataclass(frozen=True)
class EngineChoice:
    """An engine decision: what ``auto`` loads on this host.

    Attributes:
        engine: ``torch`` or ``openvino``.
        dtype: ``fp32`` or ``bf16`` (``int8`` only when asked for explicitly, on torch).
        batch_size: Windows per forward pass for that engine.
        min_cosine: Lowest cosine to torch fp32 over the check set and layers (1.0 for fp32
            torch itself).
        docs_per_second: Check-set throughput measured when deciding (0 when not measured).
        measured: Every candidate's ``engine/dtype -> [docs/s, min cosine, labels identical]``.
    """

    engine: Literal["torch", "openvino"]
    dtype: Literal["fp32", "bf16", "int8"]
    batch_size: int
    min_cosine: float = 1.0
    docs_per_second: float = 0.0
    measured: dict[str, list[float | bool]] | None = None


def _validated(engine: str, dtype: str) -> None:
    if engine not in ENGINES:
        raise ConfigError(
            f"unknown encoder engine {engine!r}; use one of {', '.join(ENGINES)} "
            "(e5_head.engine in sentiment.yaml)",
            code="E100",
        )
    if dtype not in get_args(EncoderDType):
        raise ConfigError(
            f"unknown encoder dtype {dtype!r}; use one of {', '.join(get_args(EncoderDType))}",
            code="E100",
        )
    if engine == "openvino" and dtype == "int8":
        raise ConfigError(
            "engine openvino has no int8 mode (int8 flipped 7-11% of labels); use encoder_dtype "
            "auto, fp32 or bf16, or engine torch",
            code="E101",
        )


def _version_of(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def _choice_path(folder: Path, dtype: str, num_threads: int) -> Path:
    key = "|".join(
        [
            cpu_identity(),
            str(num_threads),
            dtype,
            _version_of("torch"),
            _version_of("openvino"),
            str(_CHOICE_REVISION),
        ]
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return folder.parent / f"{folder.name}-engine" / f"{digest}.json"


def _read_choice(path: Path) -> EngineChoice | None:
    try:
        return EngineChoice(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _write_choice(path: Path, choice: EngineChoice) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(handle, "w") as stream:
        json.dump(asdict(choice), stream, indent=2, sort_keys=True)
    os.replace(staging, path)


def _head_labels(version: str) -> tuple[str, object] | None:
    """The committed sentiment head when it was trained on this encoder version."""
    from models.sentiment._head import SentimentHead

    if not _DEFAULT_HEAD.is_file():
        return None
    head = SentimentHead.load(_DEFAULT_HEAD)
    return (head.version, head) if head.metadata.encoder_version == version else None


def _timed(encoder: Encoder, texts: list[str]) -> tuple[np.ndarray, float]:
    features = encoder.encode(texts, layers=_CHECK_LAYERS)
    best = float("inf")
    for _ in range(_TIMING_REPEATS):
        start = time.perf_counter()
        encoder.encode(texts, layers=_CHECK_LAYERS)
        best = min(best, time.perf_counter() - start)
    return features, len(texts) / best


def _min_block_cosine(left: np.ndarray, right: np.ndarray) -> float:
    blocks = len(_CHECK_LAYERS)
    products = (left * right).reshape(len(left), blocks, -1).sum(axis=2)
    return float(products.min())


def _measure(folder: Path, dtype: str, num_threads: int) -> EngineChoice:
    from models.encoder._openvino import OPENVINO_BATCH_SIZE, load_openvino_encoder

    texts = list(CHECK_TEXTS) * 3
    head = _head_labels(read_version(folder))
    bf16 = cpu_supports_bf16()
    candidates: list[tuple[str, str]] = []
    if dtype in ("auto", "fp32"):
        candidates += [("torch", "fp32"), ("openvino", "fp32")]
    if dtype in ("auto", "bf16") and (bf16 or dtype == "bf16"):
        candidates += [("torch", "bf16"), ("openvino", "bf16")]
    measured: dict[str, list[float | bool]] = {}
    reference: np.ndarray | None = None
    reference_labels: np.ndarray | None = None
    best: EngineChoice | None = None
    for engine, precision in candidates:
        if engine == "torch":
            encoder = Encoder.load(folder, dtype=precision, num_threads=num_threads)  # type: ignore[arg-type]
            encoder.batch_size = TORCH_BATCH_SIZE
        else:
            encoder = load_openvino_encoder(folder, precision, num_threads)  # type: ignore[arg-type]
        features, speed = _timed(encoder, texts)
        del encoder
        if reference is None:
            if (engine, precision) != ("torch", "fp32"):
                reference = Encoder.load(folder, "fp32", num_threads).encode(
                    texts, layers=_CHECK_LAYERS
                )
            else:
                reference = features
            reference_labels = (
                head[1].predict_proba(reference).argmax(axis=1) if head else None  # type: ignore[attr-defined]
            )
        cosine = _min_block_cosine(features, reference)
        labels_same = reference_labels is None or bool(
            np.array_equal(head[1].predict_proba(features).argmax(axis=1), reference_labels)  # type: ignore[union-attr]
        )
        measured[f"{engine}/{precision}"] = [round(speed, 1), round(cosine, 6), labels_same]
        faithful = cosine >= _MIN_COSINE and labels_same
        if faithful and (best is None or speed > best.docs_per_second):
            best = EngineChoice(
                engine=engine,  # type: ignore[arg-type]
                dtype=precision,  # type: ignore[arg-type]
                batch_size=OPENVINO_BATCH_SIZE if engine == "openvino" else TORCH_BATCH_SIZE,
                min_cosine=round(cosine, 6),
                docs_per_second=round(speed, 1),
            )
    if best is None:
        best = EngineChoice(engine="torch", dtype="fp32", batch_size=TORCH_BATCH_SIZE)
    return EngineChoice(**{**asdict(best), "measured": measured})


def choose_engine(
    folder: Path, dtype: EncoderDType = "auto", num_threads: int | None = None
) -> EngineChoice:
    """The engine ``auto`` uses on this host: cached, or measured once and cached.

    Args:
        folder: The converted encoder folder.
        dtype: The requested dtype (``auto`` lets the check pick fp32 or bf16).
        num_threads: Threads the encoder will use; None: every core this process may run on.

    Returns:
        The decision.
    """
    if dtype == "int8":
        return EngineChoice(engine="torch", dtype="int8", batch_size=TORCH_BATCH_SIZE)
    threads = num_threads or available_cores()
    path = _choice_path(folder, dtype, threads)
    cached = _read_choice(path)
    if cached is not None:
        return cached
    choice = _measure(folder, dtype, threads)
    _write_choice(path, choice)
    return choice


def load_encoder(
    path: Path | str | None = None,
    dtype: EncoderDType | str = "auto",
    engine: EngineName | str = "auto",
    num_threads: int | None = None,
) -> Encoder:
    """The encoder for a configuration: the one function every stage should load it with.

    Args:
        path: Converted encoder folder; None: the default cache (converted on first use).
        dtype: ``auto`` | ``fp32`` | ``bf16`` | ``int8`` (``int8``: torch only).
        engine: ``torch``; ``openvino`` (the export is built on first use if ``make model``
            has not); ``auto``: the fastest faithful engine on this CPU (see the module doc).
        num_threads: Inference threads; None: every core this process may run on.

    Returns:
        The loaded encoder; ``encoder.engine``, ``encoder.dtype`` and ``encoder.batch_size``
        say what was chosen.

    Raises:
        ConfigError: Unknown engine or dtype (E100), or openvino with int8 (E101).
        ModelError: The folder is incomplete or the engine cannot be loaded.
    """
    _validated(str(engine), str(dtype))
    folder = Path(path) if path is not None else ensure_encoder()
    if not is_complete(folder):
        raise ModelError(
            f"{folder} is not a complete encoder folder; run `python -m models.encoder prepare`",
            code="E102",
        )
    if engine == "auto":
        choice = choose_engine(folder, dtype, num_threads)  # type: ignore[arg-type]
        engine, dtype = choice.engine, choice.dtype
    if engine == "openvino":
        from models.encoder._openvino import load_openvino_encoder

        precision = (
            dtype if dtype in ("fp32", "bf16") else ("bf16" if cpu_supports_bf16() else "fp32")
        )
        return load_openvino_encoder(folder, precision, num_threads)  # type: ignore[arg-type]
    encoder = Encoder.load(folder, dtype=dtype, num_threads=num_threads)  # type: ignore[arg-type]
    encoder.batch_size = TORCH_BATCH_SIZE
    return encoder
