"""Text embeddings for the analysis stages: reuse what the batch or the store already holds.

Order of preference for a record's vector: the batch's ``embedding`` column (written by the
sentiment stage), the ``embeddings`` table keyed by (encoder version, text hash), and only then
the encoder itself (whose new vectors are written back to the table). Features pooled from
several encoder layers (what the sentiment head reads) are cached the same way under
``<encoder version>@layers-<layers>``.

The encoder is loaded once per process (``shared_encoder``): the stages share it instead of
holding one copy each (sharing saved about 0.25 GB of a ``feedback run``).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pipelines.ingest.dedupe import text_hash
from pipelines.storage import cached_vectors, schema

if TYPE_CHECKING:
    from models.encoder import Encoder
    from pipelines.storage import Store

__all__ = ["EMBEDDING_COLUMN", "TextEmbedder", "shared_encoder"]

EMBEDDING_COLUMN = "embedding"
_LOOKUP_CHUNK = 1000
_DIM = 384  # multilingual-e5-small


def shared_encoder(
    path: str | Path | None = None, dtype: str = "auto", engine: str = "auto"
) -> Encoder:
    """The encoder loaded once per process for ``(path, dtype, engine)``, shared by every stage.

    Args:
        path: Converted encoder folder; None: the default cache (see ``load_encoder``).
        dtype: ``auto``, ``fp32``, ``bf16`` or ``int8``.
        engine: ``auto``, ``torch`` or ``openvino``.

    Returns:
        The loaded encoder (the same object for equal arguments, however they are passed).
    """
    return _shared_encoder(None if path is None else str(path), dtype, engine)


@lru_cache(maxsize=2)
def _shared_encoder(path: str | None, dtype: str, engine: str) -> Encoder:
    from models.encoder import load_encoder

    return load_encoder(path, dtype=dtype, engine=engine)


def _as_vector(value: object) -> np.ndarray | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    vector = np.asarray(value, dtype=np.float32)
    return vector if vector.ndim == 1 and vector.size > 0 else None


class TextEmbedder:
    """Passage embeddings with the shared encoder, cached in the store.

    Args:
        encoder: A loaded encoder; None uses ``shared_encoder()`` the first time a text has to
            be encoded (batches that carry embeddings never load it).
        store: Where the ``embeddings`` cache lives; None disables the cache.
        layers: None for the E5 embedding; else the encoder layers whose pooled vectors are
            concatenated (see ``Encoder.encode``), cached under their own version key.
    """

    def __init__(
        self,
        encoder: Encoder | None = None,
        store: Store | None = None,
        layers: Sequence[int] | None = None,
    ) -> None:
        self._encoder = encoder
        self.store = store
        self.layers = tuple(layers) if layers is not None else None

    @property
    def encoder(self) -> Encoder:
        """The encoder, loaded on first use."""
        if self._encoder is None:
            self._encoder = shared_encoder()
        return self._encoder

    @property
    def version(self) -> str:
        """The ``model_version`` key in the ``embeddings`` table: the encoder version, with
        ``@layers-...`` appended for multi-layer features."""
        if self._encoder is not None:
            encoder = self._encoder.version
        else:
            from models.encoder import encoder_version

            encoder = encoder_version()
        if self.layers is None:
            return encoder
        return f"{encoder}@layers-{'-'.join(map(str, self.layers))}"

    @property
    def dim(self) -> int:
        """Length of the vectors :meth:`embed` returns."""
        return _DIM * (len(self.layers) if self.layers is not None else 1)

    def _cached(self, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        if self.store is None or not hashes:
            return {}
        unique = list(dict.fromkeys(hashes))
        blobs = cached_vectors(self.store, self.version, unique, _LOOKUP_CHUNK)
        return {key: np.frombuffer(blob, dtype="<f4").copy() for key, blob in blobs.items()}

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm passage embeddings (or layer features) of ``texts``, cached where possible.

        Args:
            texts: The texts exactly as analysed.

        Returns:
            Array of shape (len(texts), dim), float32.
        """
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        hashes = [text_hash(text) for text in texts]
        cached = self._cached(hashes)
        missing = list(dict.fromkeys(h for h in hashes if h not in cached))
        if missing:
            text_of = dict(zip(hashes, texts, strict=True))
            missing_texts = [text_of[h] for h in missing]
            vectors = (
                self.encoder.encode(missing_texts, kind="passage")
                if self.layers is None
                else self.encoder.encode(missing_texts, kind="passage", layers=self.layers)
            )
            fresh = dict(zip(missing, vectors, strict=True))
            self._save(fresh)
            cached.update(fresh)
        return np.stack([cached[h] for h in hashes]).astype(np.float32, copy=False)

    def embed_with(
        self, texts: Sequence[str], extra: Sequence[str], batch_size: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`embed` for ``texts``, plus uncached vectors of ``extra``, in ONE encode.

        The texts not in the store and every distinct extra text (e.g. the documents'
        sentences) go through a single length-sorted ``Encoder.encode`` call; an extra text equal
        to a document is encoded once. Only the vectors of ``texts`` are written to the store.

        Args:
            texts: The texts exactly as analysed (documents).
            extra: More texts to encode in the same pass (not cached).
            batch_size: Encoder batch size; None: the engine's tuned size.

        Returns:
            ``(vectors of texts, vectors of extra)``, each ``(len, dim)`` float32.
        """
        from models.encoder import LAST_LAYER

        hashes = [text_hash(text) for text in texts]
        cached = self._cached(hashes)
        text_of = dict(zip(hashes, texts, strict=True))
        missing = [key for key in dict.fromkeys(hashes) if key not in cached]
        pending = list(dict.fromkeys([*(text_of[key] for key in missing), *extra]))
        by_text: dict[str, np.ndarray] = {}
        if pending:
            vectors = self.encoder.encode(
                pending,
                kind="passage",
                batch_size=batch_size,
                layers=self.layers if self.layers is not None else (LAST_LAYER,),
            )
            by_text = dict(zip(pending, vectors, strict=True))
        fresh = {key: by_text[text_of[key]] for key in missing}
        self._save(fresh)
        cached.update(fresh)
        empty = np.zeros((0, self.dim), dtype=np.float32)
        return (
            np.stack([cached[key] for key in hashes]).astype(np.float32) if texts else empty,
            np.stack([by_text[text] for text in extra]).astype(np.float32) if extra else empty,
        )

    def remember(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Cache embeddings computed elsewhere (e.g. in a forward pass that pooled more layers).

        Args:
            texts: The texts exactly as analysed.
            vectors: Their E5 passage embeddings, ``(len(texts), dim)``.
        """
        self._save(dict(zip(map(text_hash, texts), vectors, strict=True)))

    def _save(self, vectors_by_hash: dict[str, np.ndarray]) -> None:
        if self.store is None or not vectors_by_hash:
            return
        self.store.insert_ignore(
            schema.embeddings,
            [
                {
                    "model_version": self.version,
                    "text_hash": key,
                    "vector": np.asarray(vector, dtype="<f4").tobytes(),
                }
                for key, vector in vectors_by_hash.items()
            ],
        )

    def batch_embeddings(self, batch: pd.DataFrame, text_column: str = "text") -> np.ndarray:
        """One vector per row of ``batch``: its ``embedding`` value, else cached/encoded text.

        Args:
            batch: Records; may carry an ``embedding`` column of 1-d arrays (None where absent).
            text_column: Column holding the analysed text.

        Returns:
            Array of shape (len(batch), dim), float32, rows in batch order.
        """
        given: list[np.ndarray | None] = (
            [_as_vector(value) for value in batch[EMBEDDING_COLUMN]]
            if EMBEDDING_COLUMN in batch.columns
            else [None] * len(batch)
        )
        todo = [index for index, vector in enumerate(given) if vector is None]
        if todo:
            texts = [str(batch[text_column].iloc[index]) for index in todo]
            for index, vector in zip(todo, self.embed(texts), strict=True):
                given[index] = vector
        if not given:
            return np.zeros((0, _DIM), dtype=np.float32)
        return np.stack(given).astype(np.float32, copy=False)  # type: ignore[arg-type]
