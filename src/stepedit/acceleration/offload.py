"""Stream a module's weights from pinned host memory to the GPU, one layer at a time, per call.

For the exact and 24 GB modes: the 7B MLLM (about 16.6 GB in bf16) runs once or twice per edit,
and next to the DiT it would not fit the memory goals. Every submodule that owns parameters gets
a pre-hook that points its parameters at a GPU copy of its pinned host tensors and a post-hook
that points them back, so at most one layer's weights plus the activations are on the GPU at a
time. Host copies are made once; the way back costs nothing (the host tensor is still there).

Pinned memory: `Tensor.pin_memory()` goes through CUDA's caching host allocator, which rounds
every allocation up to a power of two (a 130 MiB MLP weight takes 256 MiB, a 1 GiB embedding
2 GiB): about 29 GiB pinned for a 15.5 GiB MLLM. `PinnedArena` instead copies every tensor into
one flat host buffer and registers that buffer with the driver (`cudaHostRegister`), which pins
exactly its size; each parameter's host copy is a view into it.

Text generation (v1.2's reasoning, the prompt enhancer) runs the MLLM once per generated token:
streamed, each token would copy all 15.5 GiB (0.3-0.6 s). `StreamedModule.resident()` puts the
whole module on the GPU for the duration of a block of work, one copy, and back afterwards.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

logger = logging.getLogger(__name__)

_ALIGN = 512  # bytes; keeps every view aligned for any dtype and for fast DMA


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, tuple | list):
        return type(value)(_to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value


def _aligned(nbytes: int) -> int:
    return (nbytes + _ALIGN - 1) // _ALIGN * _ALIGN


class PinnedArena:
    """One flat host buffer with a view shaped like each of `tensors`, pinned as a whole.

    `views[i]` has `tensors[i]`'s dtype and shape (the values are copied by `fill`). `nbytes`
    is the buffer's size: the sum of the tensors' sizes, each rounded up to 512 bytes, not to
    a power of two.
    """

    def __init__(self, tensors: list[Tensor]) -> None:
        offsets, total = [], 0
        for tensor in tensors:
            offsets.append(total)
            total += _aligned(tensor.numel() * tensor.element_size())
        self.nbytes = total
        # Untouched pages of a fresh allocation take no RAM: the buffer fills as tensors are
        # copied in, while their old storage is freed one by one (see StreamedModule).
        allocation = torch.empty(total + _ALIGN, dtype=torch.uint8)
        start = -allocation.data_ptr() % _ALIGN
        self.buffer = allocation[start : start + max(total, 1)]
        self.views: list[Tensor] = []
        for tensor, offset in zip(tensors, offsets, strict=True):
            size = tensor.numel() * tensor.element_size()
            flat = self.buffer[offset : offset + size].view(tensor.dtype)
            self.views.append(flat.view(tensor.shape))
        self.is_pinned = False

    def pin(self) -> None:
        """Page-lock the whole buffer at its exact size (after it is filled: registering faults
        every page in)."""
        if not torch.cuda.is_available() or self.is_pinned:
            return
        self._register()

    def _register(self) -> None:
        cudart: Any = torch.cuda.cudart()
        status = int(cudart.cudaHostRegister(self.buffer.data_ptr(), self.buffer.numel(), 0))
        if status != 0:
            # Some containers limit locked memory: stream from pageable memory (slower copies)
            # rather than fail, and say so.
            logger.warning(
                "could not pin %.2f GiB of host memory (cudaHostRegister error %d; check "
                "`ulimit -l`): streaming from pageable memory, copies will be slower",
                self.nbytes / 2**30,
                status,
            )
            return
        self.is_pinned = True

    def release(self) -> None:
        if self.is_pinned:
            cudart: Any = torch.cuda.cudart()
            cudart.cudaHostUnregister(self.buffer.data_ptr())
            self.is_pinned = False


class StreamedModule:
    """Attach layer-by-layer weight streaming to `module`; `remove()` detaches it."""

    def __init__(self, module: nn.Module, device: torch.device, *, pin: bool | None = None) -> None:
        self.module = module
        self.device = device
        self._handles: list[RemovableHandle] = []
        self._resident = False
        self.copied_bytes = 0  # host-to-device traffic so far (the cost streaming adds)
        unique: dict[int, Tensor] = {}
        for tensor in [*module.parameters(), *module.buffers()]:
            unique.setdefault(id(tensor), tensor)
        tensors = list(unique.values())
        self.arena = PinnedArena(tensors)
        self._host: dict[int, Tensor] = {}  # id(parameter or buffer) -> its view in the arena
        for tensor, view in zip(tensors, self.arena.views, strict=True):
            view.copy_(tensor.detach())
            self._host[id(tensor)] = view
            tensor.data = view  # frees the original storage (a GPU copy, or the loaded one)
        should_pin = device.type == "cuda" if pin is None else pin
        if should_pin:
            self.arena.pin()
        # The root moves every input to the device, so code inside that reads `model.device`
        # (now "cpu") to place new tensors still sees device tensors flowing through.
        root_hook = module.register_forward_pre_hook(self._inputs_to_device, with_kwargs=True)
        self._handles.append(root_hook)
        units = 0
        for sub in module.modules():
            own = [*sub.parameters(recurse=False), *sub.buffers(recurse=False)]
            if own:
                self._handles.append(sub.register_forward_pre_hook(self._load))
                self._handles.append(sub.register_forward_hook(self._unload))
                units += 1
        logger.info(
            "streaming %d modules of %s from %s host memory (%.2f GiB)",
            units,
            type(module).__name__,
            "pinned" if self.arena.is_pinned else "pageable",
            self.arena.nbytes / 2**30,
        )

    @property
    def nbytes(self) -> int:
        return self.arena.nbytes

    def _inputs_to_device(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return _to_device(args, self.device), _to_device(kwargs, self.device)

    def _own_tensors(self, module: nn.Module) -> list[Tensor]:
        return [*module.parameters(recurse=False), *module.buffers(recurse=False)]

    def _load(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        if not self._resident:
            for tensor in self._own_tensors(module):
                host = self._host[id(tensor)]
                tensor.data = host.to(self.device, non_blocking=True)
                self.copied_bytes += host.numel() * host.element_size()
        result: tuple[Any, ...] = _to_device(args, self.device)
        return result

    def _unload(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if not self._resident:
            for tensor in self._own_tensors(module):
                tensor.data = self._host[id(tensor)]

    @contextlib.contextmanager
    def resident(self) -> Iterator[None]:
        """Keep the whole module on the device inside the block (one copy in, none out)."""
        if self._resident:
            yield
            return
        tensors = [*self.module.parameters(), *self.module.buffers()]
        for tensor in tensors:
            host = self._host.get(id(tensor))
            if host is not None:
                tensor.data = host.to(self.device, non_blocking=True)
                self.copied_bytes += host.numel() * host.element_size()
        self._resident = True
        try:
            yield
        finally:
            self._resident = False
            for tensor in tensors:
                host = self._host.get(id(tensor))
                if host is not None:
                    tensor.data = host
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
