"""OpenVINO engine: the converted encoder exported once to OpenVINO IR, then run without torch.

The export (``python -m models.encoder prepare``, or on first use) traces the torch ``BertModel``
offline with ``openvino.convert_model`` into ``<cache>/encoders/<encoder version>-openvino/``
(``encoder.xml``/``encoder.bin`` and ``manifest.json``, written into a temporary sibling and
renamed into place, like the converted folder). The exported graph returns the mask-pooled mean
of every hidden state (0..12) as ``(rows, 13, 384)`` float32, so one pass serves any layer list
the sentiment head pools; the Encoder does the rest (windows, weighting, normalisation) exactly
as for torch.

The graph starts after the word-embedding lookup: the 250,037 x 384 table (384 MB of float32,
four fifths of the model) is written beside it as ``word_embeddings.npy`` and memory-mapped, so
a process holds only the rows of the tokens it meets. Inside the graph OpenVINO kept the whole
table resident (a 10-text ``feedback analyze`` peaked at 1.24 GB, of which 0.5 GB were the
mapped weights).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np

from models.encoder._convert import LAST_LAYER, MANIFEST_NAME, is_complete
from models.encoder._embedder import (
    Encoder,
    EngineParts,
    available_cores,
    cpu_identity,
    read_version,
)
from pipelines._errors import ModelError

__all__ = [
    "OPENVINO_BATCH_SIZE",
    "export_openvino",
    "load_openvino_encoder",
    "openvino_export_path",
]

# Measured best on AVX512-BF16 and AMX hosts (issue 14: 32 beats 64 and 16 with OpenVINO bf16).
OPENVINO_BATCH_SIZE = 32
_EXPORT_REVISION = 2
_XML = "encoder.xml"
_BIN = "encoder.bin"
_WORD_EMBEDDINGS = "word_embeddings.npy"
_COMPILED = "compiled"
_PRECISIONS = {"fp32": "f32", "bf16": "bf16"}


def openvino_export_path(folder: Path) -> Path:
    """Where the OpenVINO export of a converted encoder folder lives (next to it).

    Args:
        folder: The converted encoder folder (named after its version).

    Returns:
        ``<folder>-openvino`` (not necessarily existing).
    """
    return folder.parent / f"{folder.name}-openvino"


def _export_complete(target: Path, version: str) -> bool:
    if not is_complete(target):
        return False
    manifest = json.loads((target / MANIFEST_NAME).read_text())
    return manifest.get("version") == version and manifest.get("revision") == _EXPORT_REVISION


def _pooled_module(model: Any) -> Any:
    import torch

    class _PooledHiddenStates(torch.nn.Module):
        def __init__(self, bert: torch.nn.Module) -> None:
            super().__init__()
            self.bert = bert

        def forward(
            self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor
        ) -> torch.Tensor:
            output = self.bert(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                output_hidden_states=True,
            )
            mask = attention_mask.unsqueeze(-1).to(torch.float32)
            count = mask.sum(dim=1)
            return torch.stack(
                [(state.float() * mask).sum(dim=1) / count for state in output.hidden_states],
                dim=1,
            )

    return _PooledHiddenStates(model).eval()


def _write_export(folder: Path, staging: Path) -> None:
    import openvino as ov
    import torch

    encoder = Encoder.load(folder, dtype="fp32")
    table = encoder.model.get_input_embeddings().weight.detach().numpy()
    np.save(staging / _WORD_EMBEDDINGS, np.ascontiguousarray(table, dtype=np.float32))
    # Padded rows and a mask with zeros in the example keep the attention mask in the graph.
    input_ids = torch.full((8, 16), 1, dtype=torch.long)
    input_ids[:, :8] = 5
    attention_mask = torch.zeros((8, 16), dtype=torch.long)
    attention_mask[:, :8] = 1
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on shape-dependent Python branches
        model = ov.convert_model(
            _pooled_module(encoder.model),
            example_input=(torch.from_numpy(table)[input_ids], attention_mask),
            input=[
                ov.PartialShape([-1, -1, table.shape[1]]),
                ov.PartialShape([-1, -1]),
            ],
        )
    ov.save_model(model, staging / _XML, compress_to_fp16=False)
    files = {
        name: {"bytes": (staging / name).stat().st_size}
        for name in sorted((_XML, _BIN, _WORD_EMBEDDINGS))
    }
    (staging / MANIFEST_NAME).write_text(
        json.dumps(
            {
                "version": encoder.version,
                "revision": _EXPORT_REVISION,
                "openvino": ov.__version__,
                "outputs": f"mask-pooled hidden states 0..{LAST_LAYER}: (rows, 13, 384) float32",
                "files": files,
            },
            indent=2,
            sort_keys=True,
        )
        + "\n"
    )


def export_openvino(folder: Path) -> Path:
    """Export a converted encoder folder to OpenVINO IR once, atomically.

    An existing complete export of the same encoder version is kept as is (a fast no-op); an
    incomplete or stale one is replaced. Offline: traces the local torch model.

    Args:
        folder: The converted encoder folder.

    Returns:
        The export folder (:func:`openvino_export_path`).

    Raises:
        ModelError: ``folder`` is not a complete encoder folder, or the export cannot be
            written.
    """
    if not is_complete(folder):
        raise ModelError(
            f"{folder} is not a complete encoder folder (no valid {MANIFEST_NAME}); "
            "run `python -m models.encoder prepare`",
            code="E102",
        )
    target = openvino_export_path(folder)
    version = read_version(folder)
    if _export_complete(target, version):
        return target
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        _write_export(folder, staging)
        for written in staging.iterdir():
            written.chmod(0o644)
        staging.chmod(0o755)
        if target.exists() and not _export_complete(target, version):
            shutil.rmtree(target)
        try:
            os.rename(staging, target)
        except OSError:
            if not _export_complete(target, version):
                raise
    except OSError as exc:
        raise ModelError(
            f"cannot write the OpenVINO export to {target}: {exc}; check free space/permissions",
            code="E102",
        ) from exc
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def load_openvino_encoder(
    folder: Path,
    precision: Literal["fp32", "bf16"],
    num_threads: int | None = None,
    batch_size: int = OPENVINO_BATCH_SIZE,
) -> Encoder:
    """Load the OpenVINO engine for a converted encoder folder (exporting it if missing).

    Args:
        folder: The converted encoder folder.
        precision: OpenVINO ``INFERENCE_PRECISION_HINT``: ``fp32`` or ``bf16`` (on CPUs without
            native bf16 OpenVINO computes in fp32 anyway; callers resolve that first).
        num_threads: Inference threads; None uses every core this process may run on.
        batch_size: Default windows per forward pass.

    Returns:
        The encoder, engine ``openvino``; torch is not imported. Its model compiles on a
        background thread (see :meth:`Encoder.loading_in_background`).

    Raises:
        ModelError: The export cannot be built; one that cannot be compiled raises at the
            encoder's first use.
    """
    target = openvino_export_path(folder)
    if not _export_complete(target, read_version(folder)):
        print(
            f"building the OpenVINO export of the encoder in {target} (once; "
            "`python -m models.encoder prepare` does it ahead)",
            file=sys.stderr,
        )
        export_openvino(folder)
    config = {
        "INFERENCE_PRECISION_HINT": _PRECISIONS[precision],
        "INFERENCE_NUM_THREADS": num_threads or available_cores(),
        "PERFORMANCE_HINT": "LATENCY",
    }

    def load() -> EngineParts:
        compiled, blob = _compile(target, config)
        # A plain view of the mapping: indexing an np.memmap wraps every result in a memmap.
        word_embeddings = np.asarray(np.load(target / _WORD_EMBEDDINGS, mmap_mode="r"))
        return compiled, _PooledForward(compiled, word_embeddings, blob)

    def load_tokenizer() -> Any:
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(folder / "tokenizer.json"))

    return Encoder.loading_in_background(
        load,
        load_tokenizer,
        read_version(folder),
        precision,
        engine="openvino",
        batch_size=batch_size,
    )


class _PooledForward:
    """The OpenVINO forward pass: word-embedding rows looked up here, the graph pools them.

    Args:
        compiled: The compiled graph.
        word_embeddings: The (memory-mapped) word-embedding table.
        blob: The mapped compiled-model blob the graph was imported from, or None; the graph
            reads it in place (unmapping it crashed the process), so it lives as long as this.
    """

    def __init__(self, compiled: Any, word_embeddings: np.ndarray, blob: np.ndarray | None) -> None:
        self._request = compiled.create_infer_request()
        self._word_embeddings = word_embeddings
        self._blob = blob

    def __call__(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, layers: tuple[int, ...]
    ) -> np.ndarray:
        pooled = self._request.infer([self._word_embeddings[input_ids], attention_mask])[0]
        return np.asarray(pooled)[:, list(layers)]


def _compile(target: Path, config: dict[str, Any]) -> tuple[Any, np.ndarray | None]:
    """The export compiled for this CPU, imported from our compiled-model cache when it can be.

    The cache (``<export>/compiled/<digest>.blob``, ~83 MB) is OpenVINO's own export of the
    compiled model: importing it from a memory map takes 0.4 s against 0.9-1.0 s to compile
    (two EPYC cores). The digest covers the CPU (hosts sharing a cache stay apart), the graph
    files' size and time, the settings and the OpenVINO version; a blob that does not import is
    compiled again and replaced; a folder that cannot be written only loses the speed-up.
    OpenVINO's ``CACHE_DIR`` does the same but switches the process locale to ``C`` while it
    reads, which breaks text I/O on other threads (measured: the locale encoding became ASCII
    for the duration of the load).

    Returns:
        The compiled model, and the mapped blob it was imported from (None when compiled),
        which must live as long as the model.
    """
    import openvino as ov

    stats = [os.stat(target / name) for name in (_XML, _BIN)]
    stamps = [(stat.st_size, stat.st_mtime_ns) for stat in stats]
    key = f"{cpu_identity()}|{stamps}|{sorted(config.items())}|{ov.get_version()}"
    blob = target / _COMPILED / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.blob"
    core = ov.Core()
    if blob.is_file():
        try:
            mapped = np.memmap(blob, dtype=np.uint8, mode="c")
            return core.import_model(ov.Tensor(mapped, shared_memory=True), "CPU", config), mapped
        except (OSError, ValueError, RuntimeError):
            pass
    try:
        compiled = core.compile_model(str(target / _XML), "CPU", config)
    except RuntimeError as exc:
        raise ModelError(
            f"OpenVINO cannot compile {target / _XML}: {exc}; delete {target} and run "
            "`python -m models.encoder prepare`, or set e5_head.engine: torch",
            code="E102",
        ) from exc
    with contextlib.suppress(OSError, RuntimeError):
        blob.parent.mkdir(exist_ok=True)
        handle, staging = tempfile.mkstemp(prefix=f".{blob.name}.", dir=blob.parent)
        try:
            with os.fdopen(handle, "wb") as stream:
                stream.write(compiled.export_model().getbuffer())
            os.replace(staging, blob)
        finally:
            if os.path.exists(staging):
                os.unlink(staging)
    return compiled, None
