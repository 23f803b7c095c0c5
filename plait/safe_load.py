"""Reading checkpoint files without running code from them (promise 7 of docs/design.md).

torch's DCP reads ``.metadata`` with ``pickle.load`` and every non-tensor item (the step, the
lr-schedule state, optimizer hyper-parameters) with ``torch.load(weights_only=False)``: a crafted
checkpoint folder could run anything, and a manifest cannot help, since whoever crafts the files
can recompute it. Here ``.metadata`` is read by an unpickler that admits DCP's own metadata
classes and nothing else, and non-tensor items by ``torch.load(weights_only=True)`` (torch's
restricted unpickler: tensors, numbers, strings and containers). A file that needs more is
refused in one line naming it. Written by hand because DCP has no safe reader of its own.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta, TensorStorageMetadata

from plait.errors import PlaitError

#: (module, name) pairs DCP pickles into ``.metadata`` (torch 2.6-2.13), besides dtypes
_METADATA_GLOBALS = {
    ("torch.distributed.checkpoint.metadata", n)
    for n in (
        "Metadata",
        "MetadataIndex",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "TensorProperties",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    )
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.serialization", "_get_layout"),  # looks a torch.layout up by name
    ("torch", "Size"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PureWindowsPath"),
    ("collections", "OrderedDict"),
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _METADATA_GLOBALS:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a DCP checkpoint")


class SafeReader(FileSystemReader):
    """DCP's file-system reader with ``.metadata`` read by :class:`_MetadataUnpickler`."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        path = Path(self.path) / ".metadata"
        try:
            with open(path, "rb") as f:
                metadata = _MetadataUnpickler(f).load()
        except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError) as e:
            raise PlaitError(f"checkpoint file {str(path)!r} is not DCP metadata: {e}") from None
        if not isinstance(metadata, Metadata):
            raise PlaitError(f"checkpoint file {str(path)!r} is not DCP metadata")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's default planner, with non-tensor items read by torch's restricted unpickler."""

    def __init__(self, folder: Path):
        super().__init__()
        self.folder = folder

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        try:
            obj = torch.load(value, weights_only=True)
        except Exception as e:  # noqa: BLE001 - any refusal means: do not unpickle it
            raise PlaitError(
                f"checkpoint {str(self.folder)!r}: item {read_item.dest_index.fqn!r} holds more "
                f"than tensors, numbers, strings and containers; refusing to load it ({e!s:.120})"
            ) from None
        super().load_bytes(read_item, _pickled(obj))


def _pickled(obj: Any) -> io.BytesIO:
    """``obj`` re-serialised for DefaultLoadPlanner.load_bytes, which unpickles it again: it now
    holds only what weights_only admitted, so that second load cannot run code."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


def dcp_load(state: dict[str, Any], folder: Path, *, no_dist: bool) -> None:
    """``dcp.load`` of ``folder`` into ``state`` in place, never unpickling arbitrary objects.
    A refusal surfaces as its own one-line error, not inside DCP's per-rank exception report."""
    reader = SafeReader(str(folder))
    # DCP would turn this refusal into an assertion about its metadata
    check_shapes(reader.read_metadata(), state.get("model", {}), folder)
    try:
        dcp.load(
            state, storage_reader=reader, planner=SafeLoadPlanner(Path(folder)), no_dist=no_dist
        )
    except CheckpointException as e:
        for failure in e.failures.values():
            err = failure[0] if isinstance(failure, tuple) else failure
            if isinstance(err, PlaitError):
                raise err from None
        raise


def check_shapes(md: Metadata, model_state: dict[str, Any], folder: Path) -> None:
    """Every model tensor is in the checkpoint at this model's (global) shape, else one line
    naming the first that is not: DCP would report it as a traceback per rank."""
    saved = md.state_dict_metadata
    for name, t in model_state.items():
        item = saved.get(f"model.{name}")
        if item is None:
            raise PlaitError(
                f"checkpoint {str(folder)!r} has no {name} (shape {_dims(t.shape)}): it was "
                "written for another model; resume it with that model, or start a new run folder"
            )
        if isinstance(item, TensorStorageMetadata) and tuple(item.size) != tuple(t.shape):
            raise PlaitError(
                f"checkpoint {str(folder)!r}: shape of {name} {_dims(item.size)} does not match "
                f"the model's {_dims(t.shape)}; resume it with the model it was written for, or "
                "start a new run folder"
            )


def _dims(shape) -> str:
    return "[" + ",".join(str(int(d)) for d in shape) + "]"


def read_safetensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors, or one line naming the file when it is malformed."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise PlaitError(
            f"{what}: {str(path)!r} is not a readable safetensors file ({e})"
        ) from None
