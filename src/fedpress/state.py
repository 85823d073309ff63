"""States as plain trees: for checkpoints (and Flower's Context.state), without pickle.

Algorithm and codec states are frozen dataclasses of tensors, nested in tuples. `to_tree`
turns one into dicts, lists, tensors and scalars, which `torch.save` writes and
`torch.load(weights_only=True)` reads back without running code from the file;
`from_tree` rebuilds the dataclasses, importing only classes from fedpress itself.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import io
import json
import os
import struct
import tempfile
import zlib
from pathlib import Path
from typing import Any

import torch

from fedpress.errors import CheckpointError

_KIND = "__kind__"


def to_tree(obj: Any) -> Any:
    if obj is None or isinstance(obj, bool | int | float | str | torch.Tensor):
        return obj
    if isinstance(obj, bytes):  # an encoded message (an upload in flight)
        return {_KIND: "bytes", "data": torch.frombuffer(bytearray(obj), dtype=torch.uint8) if obj else
                torch.zeros(0, dtype=torch.uint8)}
    if dataclasses.is_dataclass(obj):
        cls = type(obj)
        fields = {f.name: to_tree(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        return {_KIND: "dataclass", "class": f"{cls.__module__}:{cls.__qualname__}", "fields": fields}
    if isinstance(obj, tuple):
        return {_KIND: "tuple", "items": [to_tree(x) for x in obj]}
    if isinstance(obj, list):
        return [to_tree(x) for x in obj]
    if isinstance(obj, dict):
        if not all(isinstance(k, str | int) for k in obj):
            raise TypeError("state dicts need str or int keys")
        return {_KIND: "dict", "items": [[k, to_tree(v)] for k, v in obj.items()]}
    raise TypeError(f"cannot store a {type(obj).__name__} in a state; use tensors, scalars and dataclasses")


def from_tree(tree: Any) -> Any:
    if isinstance(tree, list):
        return [from_tree(x) for x in tree]
    if not isinstance(tree, dict):
        return tree
    kind = tree.get(_KIND)
    if kind == "tuple":
        return tuple(from_tree(x) for x in tree["items"])
    if kind == "dict":
        return {k: from_tree(v) for k, v in tree["items"]}
    if kind == "bytes":
        return tree["data"].numpy().tobytes()
    if kind == "dataclass":
        module, _, qualname = tree["class"].partition(":")
        if not module.startswith("fedpress."):
            raise ValueError(f"refusing to rebuild {tree['class']}: only fedpress state classes are allowed")
        cls: Any = importlib.import_module(module)
        for part in qualname.split("."):
            cls = getattr(cls, part)
        if not dataclasses.is_dataclass(cls):
            raise ValueError(f"{tree['class']} is not a dataclass")
        return cls(**{k: from_tree(v) for k, v in tree["fields"].items()})
    raise ValueError(f"malformed state tree node: {sorted(tree)}")


# --- checkpoint files -------------------------------------------------------------------
#
#   offset  size  field
#   0       4     magic b"FPCK"
#   4       1     version (1)
#   5       8     payload length (uint64, little-endian)
#   13      32    SHA-256 of the payload
#   45      ...   payload: torch.save of the state's tree (read back with weights_only=True)
#
# The digest covers everything the checkpoint holds: a flipped bit or a truncated file is
# refused by name (CheckpointError) instead of resuming from a wrong weight or loss.

_CHECKPOINT_MAGIC = b"FPCK"
_CHECKPOINT_VERSION = 1
_CHECKPOINT_HEADER = struct.Struct("<4sBQ32s")


def encode(obj: Any) -> bytes:
    """A checkpoint's bytes: the header above, then the payload (what `save` writes to a
    file, and what a disk client store commits beside its states: runtime/store.py)."""
    buffer = io.BytesIO()
    torch.save(to_tree(obj), buffer)
    payload = buffer.getvalue()
    header = _CHECKPOINT_HEADER.pack(_CHECKPOINT_MAGIC, _CHECKPOINT_VERSION, len(payload),
                                     hashlib.sha256(payload).digest())
    return header + payload


def decode(data: bytes, where: str) -> Any:
    """The state `encode` wrote; CheckpointError naming `where` and what is wrong for anything else."""
    size = _CHECKPOINT_HEADER.size
    if data[:4] != _CHECKPOINT_MAGIC:
        raise CheckpointError(f"{where} is not a fedpress checkpoint (no FPCK header; {len(data)} bytes)")
    if len(data) < size:
        raise CheckpointError(f"{where} is truncated inside its header ({len(data)} of {size} bytes)")
    _, version, length, digest = _CHECKPOINT_HEADER.unpack_from(data)
    if version != _CHECKPOINT_VERSION:
        raise CheckpointError(f"{where}: checkpoint version {version}; this fedpress reads version "
                              f"{_CHECKPOINT_VERSION}")
    payload = data[size:]
    if len(payload) != length:
        raise CheckpointError(f"{where} is truncated or has trailing bytes: its header says {length} bytes of "
                              f"state, the file holds {len(payload)}")
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError(f"{where} is damaged: its SHA-256 does not match what was written")
    try:
        return from_tree(torch.load(io.BytesIO(payload), weights_only=True))
    except Exception as e:  # a payload that passed the digest but is not a state tree fedpress wrote
        raise CheckpointError(f"{where} does not hold a fedpress state: {e}") from None


def save(obj: Any, path: str | Path) -> None:
    """Write a checkpoint atomically (temporary file, fsync, rename): a run killed
    mid-write leaves the previous checkpoint intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = encode(obj)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load(path: str | Path) -> Any:
    """A checkpoint `save` wrote; CheckpointError naming what is wrong for anything else."""
    path = Path(path)
    return decode(path.read_bytes(), str(path))


# --- states as bytes: for Flower's Context.state, where only records of bytes persist ---

_MAGIC = b"FPST"
_DTYPES = {str(t).removeprefix("torch."): t for t in (torch.float32, torch.float16, torch.bfloat16, torch.float64,
                                                      torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8,
                                                      torch.bool)}


def to_bytes(obj: Any) -> bytes:
    """A state as one exact byte string: b"FPST", a u32 header length, a JSON header (the
    tree of `to_tree` with each tensor replaced by its dtype, shape and byte range), the
    tensors' raw little-endian bytes, and a CRC-32 of everything before it. No pickle."""
    return tree_to_bytes(to_tree(obj))


def tree_to_bytes(tree: Any) -> bytes:
    """`to_bytes` of a tree `to_tree` made (a client store narrows its tensors first)."""
    tensors: list[torch.Tensor] = []

    def strip(node: Any) -> Any:
        if isinstance(node, torch.Tensor):
            if str(node.dtype).removeprefix("torch.") not in _DTYPES:
                raise TypeError(f"cannot store a {node.dtype} tensor in state bytes")
            tensors.append(node.detach().contiguous().cpu())
            return {_KIND: "tensor", "index": len(tensors) - 1}
        if isinstance(node, list):
            return [strip(x) for x in node]
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items()}
        return node

    tree = strip(tree)
    table, offset = [], 0
    for t in tensors:
        n = t.numel() * t.element_size()
        table.append({"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape), "offset": offset,
                      "nbytes": n})
        offset += n
    header = json.dumps({"tree": tree, "tensors": table}, separators=(",", ":")).encode()
    body = b"".join(t.reshape(-1).view(torch.uint8).numpy().tobytes() for t in tensors)
    data = _MAGIC + struct.pack("<I", len(header)) + header + body
    return data + struct.pack("<I", zlib.crc32(data))


def from_bytes(data: bytes) -> Any:
    """The state `to_bytes` wrote; ValueError naming what is wrong for anything else."""
    return from_tree(tree_from_bytes(data))


def tree_from_bytes(data: bytes) -> Any:
    """The tree `tree_to_bytes` wrote, its tensors filled in; ValueError for anything else."""
    if len(data) < 12 or data[:4] != _MAGIC:
        raise ValueError("state bytes: missing the FPST magic (not a fedpress state)")
    if struct.unpack("<I", data[-4:])[0] != zlib.crc32(data[:-4]):
        raise ValueError("state bytes: CRC-32 mismatch (corrupted or truncated)")
    (hlen,) = struct.unpack("<I", data[4:8])
    if 8 + hlen > len(data) - 4:
        raise ValueError("state bytes: header length runs past the end")
    header = json.loads(data[8 : 8 + hlen])
    body = memoryview(data)[8 + hlen : -4]
    tensors = []
    for entry in header["tensors"]:
        start, n = entry["offset"], entry["nbytes"]
        if entry["dtype"] not in _DTYPES or start + n > len(body):
            raise ValueError(f"state bytes: bad tensor entry {entry}")
        dtype = _DTYPES[entry["dtype"]]
        if n == 0:  # torch.frombuffer refuses an empty buffer
            tensors.append(torch.empty(entry["shape"], dtype=dtype))
            continue
        raw = torch.frombuffer(bytearray(body[start : start + n]), dtype=torch.uint8)
        tensors.append(raw.view(dtype).reshape(entry["shape"]))

    def fill(node: Any) -> Any:
        if isinstance(node, list):
            return [fill(x) for x in node]
        if isinstance(node, dict):
            if node.get(_KIND) == "tensor":
                return tensors[node["index"]]
            return {k: fill(v) for k, v in node.items()}
        return node

    return fill(header["tree"])
