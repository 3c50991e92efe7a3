"""GGUF DiT files (community quantizations), read with the `gguf` package and dequantized on load.

The Step1X-Edit GGUF files in circulation come from city96's ComfyUI-GGUF tools: its
`convert.py` recognises the original-layout DiT (`double_blocks.0.img_attn.proj.weight`) as the
"flux" architecture and keeps the checkpoint's own key names, so a file holds exactly the keys
of the original `.safetensors` DiT; `llama-quantize` (with its patch) then quantizes the large
2-D weights. Quant types in such a file:

- F32 for every 1-D tensor (biases, norm scales, v1.0's scale_factor), tensors of at most 1024
  elements, and `img_in`, `time_in.in_layer`, `vector_in.in_layer`, `final_layer.linear`;
- F16 or BF16 for the rest of `txt_in`, `time_in`, `vector_in`, `final_layer`;
- the file's type (Q8_0, Q6_K, Q5_K, Q5_0, Q5_1, Q4_K, Q4_0, Q4_1, Q3_K, Q2_K, ...) for the
  block and connector weights.

A reshaped tensor carries its shape in `comfy.gguf.orig_shape.<key>` (never for this
architecture, honoured anyway). Diffusers-named GGUF files (`transformer_blocks.*`) are refused:
the converter refuses them too.

Every tensor is dequantized to float32 by `gguf.quants.dequantize` when the loader asks for it
(F16 and BF16 are read as they are, F32 too) and then cast to the pipeline dtype like any other
checkpoint, one tensor at a time from the memory-mapped file. The quantized storage is not kept:
combine with `--optimize 16gb` (NF4) or `+int8` to get a small model on the GPU again.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stepedit.errors import WeightsError

if TYPE_CHECKING:  # torch is imported when tensors are read: header checks stay torch-free
    import torch

    from stepedit.weights.tensors import TensorSource

Shape = tuple[int, ...]

logger = logging.getLogger(__name__)

ORIG_SHAPE_PREFIX = "comfy.gguf.orig_shape."
GGUF_SUFFIX = ".gguf"
_DIFFUSERS_MARKER = "transformer_blocks."


def is_gguf(path: str | Path) -> bool:
    return Path(path).suffix.lower() == GGUF_SUFFIX


def _gguf() -> Any:
    try:
        return importlib.import_module("gguf")
    except ImportError as exc:
        raise WeightsError(
            "GGUF files need the gguf package: pip install 'stepedit[gguf]'"
        ) from exc


class GGUFSource:
    """A `TensorSource` over one GGUF file: names, shapes and dtypes from its header, each
    tensor dequantized when read."""

    def __init__(self, path: Path) -> None:
        gguf = _gguf()
        self.path = path
        try:
            self._reader = gguf.GGUFReader(str(path))
        except Exception as exc:  # the reader raises ValueError, struct errors...
            raise WeightsError(f"cannot read GGUF file {str(path)!r}: {exc}") from exc
        self._types = gguf.GGMLQuantizationType
        fields = self._reader.fields
        self.architecture = _field(fields, "general.architecture")
        self._tensors = {t.name: t for t in self._reader.tensors}
        self._shapes: dict[str, Shape] = {}
        for name, tensor in self._tensors.items():
            stored = _field(fields, ORIG_SHAPE_PREFIX + name)
            shape = stored if stored is not None else reversed([int(n) for n in tensor.shape])
            self._shapes[name] = tuple(int(n) for n in shape)
        if any(name.startswith(_DIFFUSERS_MARKER) for name in self._tensors):
            raise WeightsError(
                f"{path.name} holds diffusers-named tensors (transformer_blocks.*); only GGUF "
                "files with the original key names (city96's convert.py) are read"
            )
        logger.info(
            "%s: GGUF (%s), %d tensors, types %s",
            path.name,
            self.architecture,
            len(self._tensors),
            self.type_counts(),
        )

    def type_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for tensor in self._tensors.values():
            counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + 1
        return counts

    def names(self) -> list[str]:
        return list(self._tensors)

    def shape(self, key: str) -> Shape:
        return self._shapes[key]

    def dtype(self, key: str) -> torch.dtype:
        import torch

        kind = self._tensors[key].tensor_type
        if kind == self._types.F16:
            return torch.float16
        if kind == self._types.BF16:
            return torch.bfloat16
        return torch.float32  # F32, and every quantized type once dequantized

    def get(self, key: str) -> torch.Tensor:
        import numpy as np
        import torch

        tensor = self._tensors[key]
        kind = tensor.tensor_type
        shape = self._shapes[key]
        if kind == self._types.BF16:
            raw = np.ascontiguousarray(tensor.data).view(np.int16)
            return torch.from_numpy(raw.copy()).view(torch.bfloat16).reshape(shape)
        if kind in (self._types.F32, self._types.F16):
            return torch.from_numpy(np.array(tensor.data)).reshape(shape)
        try:
            values = _gguf().quants.dequantize(tensor.data, kind)
        except NotImplementedError as exc:
            raise WeightsError(
                f"{self.path.name}: {key!r} is {kind.name}, which the gguf package cannot "
                "dequantize"
            ) from exc
        return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).reshape(shape)


def _field(fields: dict[str, Any], name: str) -> Any:
    field = fields.get(name)
    return None if field is None else field.contents()


def gguf_keys(files: Sequence[Path]) -> set[str]:
    """Tensor names of GGUF files (header only)."""
    keys: set[str] = set()
    for file in files:
        keys.update(GGUFSource(file).names())
    return keys


@contextlib.contextmanager
def open_dit_source(files: Sequence[Path]) -> Iterator[TensorSource]:
    """The DiT's tensors: a GGUF file, or (sharded) safetensors files."""
    from stepedit.weights.tensors import SafetensorsSource

    ggufs = [f for f in files if is_gguf(f)]
    if not ggufs:
        with SafetensorsSource(files) as source:
            yield source
        return
    if len(files) != 1:
        raise WeightsError(f"a GGUF DiT is one file; got {[str(f) for f in files]}")
    yield GGUFSource(ggufs[0])
