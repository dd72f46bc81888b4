"""Text embeddings for the analysis stages: reuse what the batch or the store already holds.

Order of preference for a record's vector: the batch's ``embedding`` column (written by the
sentiment stage), the ``embeddings`` table keyed by (encoder version, text hash), and only then
the encoder itself (whose new vectors are written back to the table). Features pooled from
several encoder layers (what the sentiment and aspect heads read) are cached the same way under
``<encoder version>@layers-<layers>`` and travel in batch columns named the same way
(:func:`embedding_columns`).

The encoder is loaded once per process (``shared_encoder``): the stages share it instead of
holding one copy each. A second copy cost about 1 GB and 7.6 s of ``feedback analyze``'s cold
start (the aspects stage asked with other arguments than the sentiment stage, which a
``functools.lru_cache`` keyed apart).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pipelines.ingest.dedupe import text_hash
from pipelines.storage import cached_vectors, schema

if TYPE_CHECKING:
    from models.encoder import Encoder
    from pipelines.storage import Store

__all__ = [
    "E5_DIM",
    "EMBEDDING_COLUMN",
    "SENTENCE_EMBEDDING_COLUMN",
    "TextEmbedder",
    "cached_phrase_vectors",
    "e5_embeddings",
    "embedding_columns",
    "is_embedding_column",
    "process_encoder",
    "shared_encoder",
]

EMBEDDING_COLUMN = "embedding"
SENTENCE_EMBEDDING_COLUMN = "sentence_embeddings"
_LOOKUP_CHUNK = 1000
E5_DIM = 384
"""Width of the E5 embedding (multilingual-e5-small), and of each layer's block of features."""
_UNSAFE_IN_NAME = re.compile(r"[^A-Za-z0-9._@-]")
_log = logging.getLogger(__name__)


_EncoderKey = tuple[str | None, str, str]
_encoders: dict[_EncoderKey, Encoder] = {}
_encoders_lock = threading.Lock()


def _encoder_key(path: str | Path | None, dtype: str, engine: str) -> _EncoderKey:
    """``(folder, dtype, engine)`` with the folder resolved, so equal settings spelt apart share
    a key."""
    folder = str(Path(path).expanduser().resolve()) if path is not None else None
    return (folder, dtype, engine)


def _load_encoder(path: str | None, dtype: str, engine: str) -> Encoder:
    from models.encoder import load_encoder

    return load_encoder(path, dtype=dtype, engine=engine)


def shared_encoder(
    path: str | Path | None = None, dtype: str = "auto", engine: str = "auto"
) -> Encoder:
    """The encoder loaded once per process for ``(path, dtype, engine)``, shared by every stage.

    Args:
        path: Converted encoder folder; None: the default cache (see ``load_encoder``).
        dtype: ``auto``, ``fp32``, ``bf16`` or ``int8``.
        engine: ``auto``, ``torch`` or ``openvino``.

    Returns:
        The loaded encoder (the same object for every call with the same settings).
    """
    key = _encoder_key(path, dtype, engine)
    with _encoders_lock:
        if key not in _encoders:
            _encoders[key] = _load_encoder(*key)
        return _encoders[key]


def _last_loaded() -> Encoder | None:
    with _encoders_lock:
        return next(reversed(_encoders.values())) if _encoders else None


def process_encoder() -> Encoder:
    """The encoder this process loaded last (the one the sentiment stage configured), else the
    default one: what a stage without encoder settings of its own embeds with.

    Returns:
        The shared encoder.
    """
    return _last_loaded() or shared_encoder()


def _layers_suffix(layers: Sequence[int] | None) -> str:
    return "" if layers is None else f"@layers-{'-'.join(map(str, layers))}"


def embedding_columns(layers: Sequence[int] | None = None) -> tuple[str, str]:
    """Batch columns holding the vectors of ``layers``: ``(per record, per sentence)``.

    Args:
        layers: None for the E5 embedding; else the encoder layers whose pooled vectors are
            concatenated (e.g. the sentiment head's features).

    Returns:
        ``("embedding", "sentence_embeddings")`` for the E5 embedding, else the same names
        with ``@layers-4-6-...`` appended.
    """
    suffix = _layers_suffix(layers)
    return f"{EMBEDDING_COLUMN}{suffix}", f"{SENTENCE_EMBEDDING_COLUMN}{suffix}"


def e5_embeddings(vectors: np.ndarray) -> np.ndarray:
    """The E5 embeddings inside layer features: their last block (features end with the last
    layer). E5 embeddings come back as they are.

    Args:
        vectors: ``(N, 384 * layers)`` features or ``(N, 384)`` embeddings.

    Returns:
        ``(N, 384)`` unit-norm E5 embeddings (a view).
    """
    return vectors[:, -E5_DIM:]


def is_embedding_column(name: object) -> bool:
    """Whether a batch column holds vectors (kept in memory, never written to outputs).

    Args:
        name: A column name.

    Returns:
        True for the columns :func:`embedding_columns` names, whatever their layers.
    """
    return isinstance(name, str) and (
        name in (EMBEDDING_COLUMN, SENTENCE_EMBEDDING_COLUMN)
        or name.startswith((f"{EMBEDDING_COLUMN}@", f"{SENTENCE_EMBEDDING_COLUMN}@"))
    )


def _as_vector(value: object) -> np.ndarray | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    vector = np.asarray(value, dtype=np.float32)
    return vector if vector.ndim == 1 and vector.size > 0 else None


class TextEmbedder:
    """Passage embeddings with the shared encoder, cached in the store.

    Args:
        encoder: A loaded encoder; None uses ``process_encoder()`` the first time a text has to
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
            self._encoder = process_encoder()
        return self._encoder

    @property
    def encoder_version(self) -> str:
        """Version of the encoder behind the vectors (without loading it)."""
        loaded = self._encoder or _last_loaded()
        if loaded is not None:
            return loaded.version
        from models.encoder import encoder_version

        return encoder_version()

    @property
    def version(self) -> str:
        """The ``model_version`` key in the ``embeddings`` table: the encoder version, with
        ``@layers-...`` appended for multi-layer features."""
        return f"{self.encoder_version}{_layers_suffix(self.layers)}"

    @property
    def dim(self) -> int:
        """Length of the vectors :meth:`embed` returns."""
        return E5_DIM * (len(self.layers) if self.layers is not None else 1)

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
        """One vector per row of ``batch``: its value in this embedder's column (``embedding``
        or ``embedding@layers-...``, see :func:`embedding_columns`), else cached/encoded text.

        Args:
            batch: Records; may carry the column, 1-d arrays (None where absent).
            text_column: Column holding the analysed text.

        Returns:
            Array of shape (len(batch), dim), float32, rows in batch order.
        """
        column = embedding_columns(self.layers)[0]
        given: list[np.ndarray | None] = (
            [_as_vector(value) for value in batch[column]]
            if column in batch.columns
            else [None] * len(batch)
        )
        todo = [index for index, vector in enumerate(given) if vector is None]
        if todo:
            texts = [str(batch[text_column].iloc[index]) for index in todo]
            for index, vector in zip(todo, self.embed(texts), strict=True):
                given[index] = vector
        if not given:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack(given).astype(np.float32, copy=False)  # type: ignore[arg-type]


def _phrases_file(folder: Path, version: str, phrases: Sequence[str]) -> Path:
    digest = hashlib.sha256(json.dumps(list(phrases), ensure_ascii=False).encode()).hexdigest()
    return folder / f"{_UNSAFE_IN_NAME.sub('_', version)}-{digest[:32]}.npy"


def _read_vectors(file: Path, rows: int, dim: int) -> np.ndarray | None:
    try:
        vectors = np.load(file, allow_pickle=False)
    except (OSError, ValueError):
        return None
    return vectors if vectors.shape == (rows, dim) and vectors.dtype == np.float32 else None


def _write_atomically(file: Path, vectors: np.ndarray) -> None:
    """Write ``vectors`` to a temporary file renamed over ``file``: readers never see half."""
    temporary: Path | None = None
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=file.parent, suffix=".tmp", delete=False) as handle:
            temporary = Path(handle.name)
            np.save(handle, vectors, allow_pickle=False)
        os.replace(temporary, file)
    except OSError as exc:
        if temporary is not None:
            temporary.unlink(missing_ok=True)
        _log.warning("phrase embeddings not cached in %s (%s); encoded again next run", file, exc)


def cached_phrase_vectors(
    groups: Sequence[Sequence[str]], embedder: TextEmbedder, folder: Path | None = None
) -> list[np.ndarray]:
    """Embeddings of fixed phrase lists (the aspect examples), cached on disk between runs.

    Each list is one ``.npy`` file keyed by the encoder version and a hash of its phrases, written
    atomically; lists missing from the cache are encoded together in one call.

    Args:
        groups: Phrase lists, e.g. one per aspect.
        embedder: Embeds the missing phrases; its ``version`` keys the files.
        folder: Cache folder; None: ``<$FEEDBACK_CACHE_DIR or ~/.cache/feedback-pipeline>/phrases``.

    Returns:
        Per list, its ``(len(list), dim)`` float32 unit-norm vectors.
    """
    if folder is None:
        from models.encoder import default_cache_root

        folder = default_cache_root() / "phrases"
    version = embedder.version
    files = [_phrases_file(folder, version, phrases) for phrases in groups]
    found = [
        _read_vectors(file, len(phrases), embedder.dim)
        for file, phrases in zip(files, groups, strict=True)
    ]
    missing = [index for index, vectors in enumerate(found) if vectors is None]
    if missing:
        fresh = embedder.embed([phrase for index in missing for phrase in groups[index]])
        offset = 0
        for index in missing:
            vectors = np.ascontiguousarray(fresh[offset : offset + len(groups[index])])
            offset += len(groups[index])
            _write_atomically(files[index], vectors)
            found[index] = vectors
    return found  # type: ignore[return-value]
