"""Hashed character and word n-gram counts, bucket for bucket those of scikit-learn's
``HashingVectorizer`` (``alternate_sign=False``, ``lowercase=True``, L2 norm), without it.

Importing scikit-learn costs ~0.9 s on two cores, most of a short ``feedback analyze``'s budget,
for one hash function. The n-grams are cut as scikit-learn cuts them (``char_wb`` and word
analyzers), and MurmurHash3 (x86, 32-bit, seed 0) runs vectorised in NumPy over all n-grams of
one byte length at a time. ``tests/test_sentiment_stack.py`` checks that the matrices equal
scikit-learn's, so committed n-gram weights stay valid.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import sparse

__all__ = ["hashed_ngram_counts"]

_WORD = re.compile(r"(?u)\b\w+\b")
_C1 = np.uint32(0xCC9E2D51)
_C2 = np.uint32(0x1B873593)
_INT32_MIN = -(2**31)


def _word_ngrams(text: str, min_n: int, max_n: int) -> list[str]:
    """scikit-learn's word n-grams over ``\\b\\w+\\b`` tokens, shortest first."""
    words = _WORD.findall(text)
    grams: list[str] = list(words) if min_n == 1 else []
    for n in range(max(min_n, 2), min(max_n, len(words)) + 1):
        grams.extend(" ".join(words[start : start + n]) for start in range(len(words) - n + 1))
    return grams


def _rotl(values: np.ndarray, bits: int) -> np.ndarray:
    return (values << np.uint32(bits)) | (values >> np.uint32(32 - bits))


def _murmurhash3_32(blocks: np.ndarray) -> np.ndarray:
    """MurmurHash3_x86_32 with seed 0 of each row of ``blocks`` (``(N, L)`` uint8), as int32."""
    count, length = blocks.shape
    hashes = np.zeros(count, dtype=np.uint32)
    whole = length // 4
    if whole:
        words = np.ascontiguousarray(blocks[:, : whole * 4]).view("<u4")
        for column in range(whole):
            key = _rotl(words[:, column] * _C1, 15) * _C2
            hashes = _rotl(hashes ^ key, 13) * np.uint32(5) + np.uint32(0xE6546B64)
    tail = blocks[:, whole * 4 :].astype(np.uint32)
    if tail.shape[1]:
        key = np.zeros(count, dtype=np.uint32)
        for position in range(tail.shape[1] - 1, -1, -1):
            key ^= tail[:, position] << np.uint32(8 * position)
        hashes ^= _rotl(key * _C1, 15) * _C2
    hashes ^= np.uint32(length)
    hashes ^= hashes >> np.uint32(16)
    hashes *= np.uint32(0x85EBCA6B)
    hashes ^= hashes >> np.uint32(13)
    hashes *= np.uint32(0xC2B2AE35)
    hashes ^= hashes >> np.uint32(16)
    return hashes.view(np.int32)


def _hashed_spans(
    encoded: np.ndarray, starts: np.ndarray, lengths: np.ndarray, n_features: int
) -> np.ndarray:
    """The bucket of each byte span ``encoded[start:start + length]``, hashing all spans of one
    length at once."""
    signed = np.empty(len(starts), dtype=np.int64)
    by_length = np.argsort(lengths, kind="stable")
    bounds = np.flatnonzero(np.diff(lengths[by_length])) + 1
    for positions in np.split(by_length, bounds) if len(by_length) else []:
        length = int(lengths[positions[0]])
        signed[positions] = _murmurhash3_32(sliding_window_view(encoded, length)[starts[positions]])
    return _bucket_of(signed, n_features)


def _bucket_of(signed: np.ndarray, n_features: int) -> np.ndarray:
    buckets = np.abs(signed) % n_features
    # abs(-2**31) overflows int32 in scikit-learn's Cython; it defines this bucket instead.
    buckets[signed == _INT32_MIN] = (2**31 - 1 - (n_features - 1)) % n_features
    return buckets


def _char_wb_buckets(
    texts: list[str], min_n: int, max_n: int, n_features: int
) -> tuple[np.ndarray, np.ndarray]:
    """Text index and bucket of every ``char_wb`` n-gram, as scikit-learn cuts them.

    Within each word padded with one space each side: every window of ``n`` characters for
    ``n`` in ``[min_n, max_n]``; a padded word no longer than ``n`` counts once, whole, and
    stops there. Windows are taken on one array of all padded words and hashed from their UTF-8
    bytes, with no Python object per n-gram.
    """
    words = [text.split() for text in texts]
    padded = "".join(f" {word} " for text_words in words for word in text_words)
    word_rows = np.repeat(np.arange(len(texts)), [len(text_words) for text_words in words])
    word_lengths = np.fromiter(
        (len(word) + 2 for text_words in words for word in text_words),
        dtype=np.int64,
        count=len(word_rows),
    )
    word_starts = np.cumsum(word_lengths) - word_lengths
    points = np.frombuffer(padded.encode("utf-32-le"), dtype=np.uint32)
    utf8_sizes = 1 + (points >= 0x80) + (points >= 0x800) + (points >= 0x10000)
    byte_offsets = np.concatenate([[0], np.cumsum(utf8_sizes)])
    starts, lengths, rows = [], [], []
    still_counting = np.ones(len(word_lengths), dtype=bool)
    for n in range(min_n, max_n + 1):
        windows = np.where(word_lengths > n, word_lengths - n + 1, 1) * still_counting
        first = np.repeat(word_starts, windows)
        within = np.arange(int(windows.sum())) - np.repeat(np.cumsum(windows) - windows, windows)
        starts.append(first + within)
        lengths.append(np.repeat(np.minimum(word_lengths, n), windows))
        rows.append(np.repeat(word_rows, windows))
        still_counting &= word_lengths > n
    char_starts = np.concatenate(starts)
    byte_starts = byte_offsets[char_starts]
    byte_lengths = byte_offsets[char_starts + np.concatenate(lengths)] - byte_starts
    encoded = np.frombuffer(padded.encode("utf-8"), dtype=np.uint8)
    return np.concatenate(rows), _hashed_spans(encoded, byte_starts, byte_lengths, n_features)


def _word_buckets(
    texts: list[str], min_n: int, max_n: int, n_features: int
) -> tuple[np.ndarray, np.ndarray]:
    """Text index and bucket of every word n-gram."""
    per_text = [_word_ngrams(text, min_n, max_n) for text in texts]
    rows = np.repeat(np.arange(len(texts)), [len(grams) for grams in per_text])
    grams = [gram.encode("utf-8") for text_grams in per_text for gram in text_grams]
    lengths = np.fromiter(map(len, grams), dtype=np.int64, count=len(grams))
    starts = np.cumsum(lengths) - lengths
    encoded = np.frombuffer(b"".join(grams), dtype=np.uint8)
    return rows, _hashed_spans(encoded, starts, lengths, n_features)


def _normalised_counts(
    rows: np.ndarray, buckets: np.ndarray, n_texts: int, n_features: int
) -> sparse.csr_matrix:
    """Row-L2-normalised counts of the n-grams of each text in ``n_features`` buckets."""
    counts = sparse.csr_matrix(
        (np.ones(len(rows)), (rows, buckets)), shape=(n_texts, n_features), dtype=np.float64
    )
    counts.sum_duplicates()
    norms = np.sqrt(np.asarray(counts.multiply(counts).sum(axis=1)).ravel())
    norms[norms == 0] = 1.0
    counts.data /= np.repeat(norms, np.diff(counts.indptr))
    return counts


def hashed_ngram_counts(
    texts: Sequence[str],
    char_ngrams: tuple[int, int],
    char_features: int,
    word_ngrams: tuple[int, int],
    word_features: int,
) -> sparse.csr_matrix:
    """The character block, then the word block, of each lowercased text's hashed n-grams.

    Args:
        texts: Texts (lowercased here).
        char_ngrams: ``(min, max)`` character n-gram lengths, within word boundaries.
        char_features: Buckets of the character block.
        word_ngrams: ``(min, max)`` word n-gram lengths.
        word_features: Buckets of the word block.

    Returns:
        ``(N, char_features + word_features)`` float64 CSR matrix, each block L2-normalised.
    """
    lowered = [text.lower() for text in texts]
    chars = _normalised_counts(
        *_char_wb_buckets(lowered, *char_ngrams, char_features), len(lowered), char_features
    )
    words = _normalised_counts(
        *_word_buckets(lowered, *word_ngrams, word_features), len(lowered), word_features
    )
    return sparse.hstack([chars, words], format="csr")
