"""Layout: where each named parameter tensor lives inside one flat fp32 vector.

A model update travels as one flat vector. Sender and receiver agree on the
layout once (a handshake, like agreeing on the model architecture); messages
never repeat it. Per-tensor codecs (per-tensor top-k, FedSparQ's per-layer
thresholds, min-max affine quantization) read it to find tensor boundaries.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Entry:
    """One named tensor: its shape and its [offset, offset + numel) slice of the flat vector."""

    name: str
    shape: tuple[int, ...]
    offset: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def stop(self) -> int:
        return self.offset + self.numel


@dataclass(frozen=True)
class Layout:
    """Ordered names and shapes of a model's tensors, laid end to end in one flat vector."""

    entries: tuple[Entry, ...]

    @classmethod
    def from_shapes(cls, shapes: Mapping[str, tuple[int, ...]] | list[tuple[str, tuple[int, ...]]]):
        items = shapes.items() if isinstance(shapes, Mapping) else shapes
        entries, offset, seen = [], 0, set()
        for name, shape in items:
            if name in seen:
                raise ValueError(f"Layout: tensor name {name!r} appears twice")
            seen.add(name)
            shape = tuple(int(s) for s in shape)
            if any(s < 0 for s in shape):
                raise ValueError(f"Layout: tensor {name!r} has a negative dimension {shape}")
            entries.append(Entry(name, shape, offset))
            offset += math.prod(shape)
        return cls(tuple(entries))

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor]) -> Layout:
        return cls.from_shapes([(n, tuple(t.shape)) for n, t in tensors.items()])

    @classmethod
    def flat(cls, d: int, name: str = "x") -> Layout:
        """A layout with a single 1-D tensor of d elements (for plain vectors)."""
        return cls.from_shapes([(name, (d,))])

    @property
    def numel(self) -> int:
        """d: the length of the flat vector."""
        return self.entries[-1].stop if self.entries else 0

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries)

    def __getitem__(self, name: str) -> Entry:
        for e in self.entries:
            if e.name == name:
                return e
        raise KeyError(f"Layout has no tensor named {name!r}; it has {list(self.names)}")

    def offsets(self) -> torch.Tensor:
        """Boundaries [0, stop_0, stop_1, ..., d] as int64, length len(self) + 1."""
        return torch.tensor([0] + [e.stop for e in self.entries], dtype=torch.int64)

    def segment_ids(self) -> torch.Tensor:
        """For every flat coordinate, the index of the tensor it belongs to. Shape (d,)."""
        sizes = torch.tensor([e.numel for e in self.entries], dtype=torch.int64)
        return torch.repeat_interleave(torch.arange(len(self.entries)), sizes)

    def flatten(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Concatenate the named tensors, in layout order, into one fp32 vector of length d."""
        missing = [e.name for e in self.entries if e.name not in tensors]
        extra = [n for n in tensors if n not in set(self.names)]
        if missing or extra:
            raise ValueError(f"Layout.flatten: missing tensors {missing}, unexpected tensors {extra}")
        parts = []
        for e in self.entries:
            t = tensors[e.name]
            if tuple(t.shape) != e.shape:
                raise ValueError(
                    f"Layout.flatten: tensor {e.name!r} has shape {tuple(t.shape)}, "
                    f"layout says {e.shape}"
                )
            parts.append(t.detach().reshape(-1).to(torch.float32))
        if not parts:
            return torch.zeros(0, dtype=torch.float32)
        return torch.cat(parts)

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a flat vector of length d into named views with the layout's shapes."""
        if flat.ndim != 1 or flat.numel() != self.numel:
            raise ValueError(
                f"Layout.unflatten: expected a 1-D vector of {self.numel} elements, "
                f"got shape {tuple(flat.shape)}"
            )
        return {e.name: flat[e.offset : e.stop].view(e.shape) for e in self.entries}

    def fingerprint(self) -> int:
        """A 32-bit digest of names and shapes; frames carry it to catch a layout mismatch."""
        import zlib

        text = ";".join(f"{e.name}:{','.join(map(str, e.shape))}" for e in self.entries)
        return zlib.crc32(text.encode())
