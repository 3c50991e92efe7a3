"""Read-only views of checkpoint tensors, one key at a time.

A `TensorSource` answers key names and shapes from safetensors headers without reading data,
and hands out one tensor per `get`. Converters and the strict loader work through it so that a
checkpoint is never materialised as a whole dict next to the model it is loaded into.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import safe_open

from stepedit.errors import WeightsError

Shape = tuple[int, ...]
FIRST_FEW = 5  # the keys an error message names; it counts the rest


def first_few(items: Sequence[str], separator: str = ", ") -> str:
    """The first `FIRST_FEW` of `items` joined, and how many more there are (error messages)."""
    more = f" and {len(items) - FIRST_FEW} more" if len(items) > FIRST_FEW else ""
    return separator.join(items[:FIRST_FEW]) + more


def first_keys(keys: Sequence[str]) -> str:
    """`first_few` of `keys`, quoted, in their order."""
    return first_few([repr(key) for key in keys])


def key_problems(missing: Sequence[str], unexpected: Sequence[str]) -> list[str]:
    """What a strict loader says of missing and unexpected keys (nothing when there are none)."""
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {first_keys(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {first_keys(unexpected)}")
    return problems


class TensorSource(Protocol):
    def names(self) -> list[str]:
        """Key names, in file order."""
        ...

    def shape(self, key: str) -> Shape: ...

    def dtype(self, key: str) -> torch.dtype: ...

    def get(self, key: str) -> torch.Tensor: ...


_SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


class SafetensorsSource:
    """Tensors from one or more (sharded) safetensors files, memory-mapped by safetensors.

    Use as a context manager; `get` reads a single tensor (a CPU tensor backed by the mapping
    or a copy of one key, never the whole file).
    """

    def __init__(self, files: Iterable[Path]) -> None:
        self.files = list(files)
        self._stack = ExitStack()
        self._handles: dict[str, Any] = {}
        self._where: dict[str, str] = {}

    def __enter__(self) -> SafetensorsSource:
        for file in self.files:
            try:
                handle = self._stack.enter_context(safe_open(str(file), framework="pt"))
            except Exception as exc:  # safetensors raises its own error types
                self._stack.close()
                raise WeightsError(f"cannot open {str(file)!r}: {exc}") from exc
            names: list[str] = handle.keys()
            for key in names:
                if key in self._where:
                    raise WeightsError(f"key {key!r} is in both {self._where[key]} and {file}")
                self._where[key] = str(file)
                self._handles[key] = handle
        return self

    def __exit__(self, *exc: object) -> None:
        self._handles.clear()
        self._stack.close()

    def names(self) -> list[str]:
        return list(self._handles)

    def shape(self, key: str) -> Shape:
        return tuple(self._handles[key].get_slice(key).get_shape())

    def dtype(self, key: str) -> torch.dtype:
        name = self._handles[key].get_slice(key).get_dtype()
        if name not in _SAFETENSORS_DTYPES:
            raise WeightsError(f"key {key!r} has unsupported dtype {name}")
        return _SAFETENSORS_DTYPES[name]

    def get(self, key: str) -> torch.Tensor:
        tensor: torch.Tensor = self._handles[key].get_tensor(key)
        return tensor


class DictSource:
    """Tensors already in memory (tests, modules' state dicts)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self._tensors = tensors

    def names(self) -> list[str]:
        return list(self._tensors)

    def shape(self, key: str) -> Shape:
        return tuple(self._tensors[key].shape)

    def dtype(self, key: str) -> torch.dtype:
        return self._tensors[key].dtype

    def get(self, key: str) -> torch.Tensor:
        return self._tensors[key]


class MappedSource:
    """A lazy view of another source: `get` of a listed key runs its converter on demand.

    `shapes` gives the shape of each key of the view; `produce(key)` builds the tensor.
    """

    def __init__(
        self,
        shapes: Mapping[str, Shape],
        dtypes: Mapping[str, torch.dtype],
        produce: Callable[[str], torch.Tensor],
    ) -> None:
        self._shapes = dict(shapes)
        self._dtypes = dict(dtypes)
        self._produce = produce

    def names(self) -> list[str]:
        return list(self._shapes)

    def shape(self, key: str) -> Shape:
        return self._shapes[key]

    def dtype(self, key: str) -> torch.dtype:
        return self._dtypes[key]

    def get(self, key: str) -> torch.Tensor:
        tensor = self._produce(key)
        if tuple(tensor.shape) != self._shapes[key]:
            raise WeightsError(
                f"converted {key!r} has shape {tuple(tensor.shape)}, expected {self._shapes[key]}"
            )
        return tensor


_DTYPE_NAMES = {dtype: name for name, dtype in _SAFETENSORS_DTYPES.items()}


def write_safetensors(
    path: Path, source: TensorSource, metadata: Mapping[str, str] | None = None
) -> int:
    """Write `source` as one safetensors file, one tensor at a time; return the bytes written.

    `safetensors.torch.save_file` needs every tensor in one dict; streaming keeps the peak at one
    tensor, so a 12B-parameter DiT converts without a second copy in RAM.
    """
    entries: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
    keys = source.names()
    offset = 0
    for key in keys:
        dtype = source.dtype(key)
        if dtype not in _DTYPE_NAMES:
            raise WeightsError(f"cannot store {key!r}: dtype {dtype} has no safetensors name")
        shape = source.shape(key)
        size = dtype.itemsize
        for dim in shape:
            size *= dim
        entries[key] = {
            "dtype": _DTYPE_NAMES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    header = json.dumps(entries, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # the format aligns the data section to 8 bytes
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as file:
        file.write(struct.pack("<Q", len(header)))
        file.write(header)
        for key in keys:
            tensor = source.get(key).detach().to("cpu")
            if tensor.dtype != source.dtype(key) or tuple(tensor.shape) != source.shape(key):
                raise WeightsError(f"{key!r} changed dtype or shape while being written")
            data = tensor.contiguous().reshape(-1).view(torch.uint8).numpy()
            file.write(data.data)
            del tensor, data
    return offset
