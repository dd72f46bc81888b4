"""Training-time embedding cache on disk, keyed by encoder version and the exact texts.

Embedding the ~53k labelled texts takes many minutes on a small CPU; the vectors are kept
under ``<cache root>/sentiment-features/<encoder version>/<encoder dtype>/layers-<layers>/``
(never in the repository) so that retraining a head costs seconds. Long lists are embedded and
stored in blocks of ``CHUNK_ROWS`` consecutive texts, each written as soon as it is computed: an
interrupted run resumes where it stopped, and a list made of whole blocks of another (a capped
training set, see ``datasets.max_train_rows``) reuses their vectors.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from models.encoder import LAST_LAYER, default_cache_root

if TYPE_CHECKING:
    from models.encoder import Encoder

__all__ = ["CHUNK_ROWS", "FeatureCache"]

CHUNK_ROWS = 500


def _texts_digest(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()[:16]


class FeatureCache:
    """Passage embeddings of labelled texts, computed once per encoder version and layers.

    Args:
        encoder: The encoder whose vectors are cached.
        cache_root: Cache root; None uses ``$FEEDBACK_CACHE_DIR`` or ``~/.cache/feedback-pipeline``.
        layers: Encoder layers pooled into each vector (see ``Encoder.encode``).
    """

    def __init__(
        self,
        encoder: Encoder,
        cache_root: str | os.PathLike[str] | None = None,
        layers: Sequence[int] = (LAST_LAYER,),
    ) -> None:
        self.encoder = encoder
        self.layers = tuple(layers)
        root = Path(cache_root) if cache_root is not None else default_cache_root()
        self.folder = (
            root.expanduser()
            / "sentiment-features"
            / encoder.version
            / encoder.dtype
            / ("layers-" + "-".join(map(str, self.layers)))
        )

    def path_for(self, texts: Sequence[str]) -> Path:
        """Where the vectors of exactly these texts, in this order, are (or will be) stored."""
        return self.folder / f"{len(texts)}-{_texts_digest(texts)}.npy"

    def embeddings(self, texts: Sequence[str]) -> np.ndarray:
        """Passage features of ``texts`` (one unit-norm block per layer), from disk if computed.

        Args:
            texts: Analysis texts, in order.

        Returns:
            ``(len(texts), 384 * len(layers))`` float32 array.
        """
        path = self.path_for(texts)
        if path.is_file():
            return np.load(path)
        blocks = [texts[start : start + CHUNK_ROWS] for start in range(0, len(texts), CHUNK_ROWS)]
        if len(blocks) <= 1:
            return self._computed(list(texts), path)
        return np.concatenate(
            [self._computed(list(block), self.path_for(block)) for block in blocks]
        )

    def _computed(self, texts: list[str], path: Path) -> np.ndarray:
        if path.is_file():
            return np.load(path)
        vectors = self.encoder.encode(texts, kind="passage", layers=self.layers)
        self._store(vectors, path)
        return vectors

    def _store(self, vectors: np.ndarray, path: Path) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self.folder, suffix=".npy.tmp")
        with os.fdopen(handle, "wb") as stream:
            np.save(stream, vectors)
        os.replace(temporary, path)
