"""Stream a module's weights from pinned host memory to the GPU, one layer at a time, per call.

For the 24 GB mode: the 7B MLLM (about 16.6 GB in bf16) runs once per edit, and next to the FP8
DiT (about 12 GB) it does not fit in 22 GB as a whole. Every submodule that owns parameters gets
a pre-hook that points its parameters at a GPU copy of its pinned host tensors and a post-hook
that points them back, so at most one layer's weights plus the activations are on the GPU at a
time. Host copies are made once; the way back costs nothing (the host tensor is still there).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

logger = logging.getLogger(__name__)


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, tuple | list):
        return type(value)(_to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value


def _pinned(tensor: Tensor) -> Tensor:
    host = tensor.detach().to("cpu")
    return host.pin_memory() if torch.cuda.is_available() else host


class StreamedModule:
    """Attach layer-by-layer weight streaming to `module`; `remove()` detaches it."""

    def __init__(self, module: nn.Module, device: torch.device) -> None:
        self.module = module
        self.device = device
        self._handles: list[RemovableHandle] = []
        self._host: dict[int, Tensor] = {}  # id(parameter or buffer) -> pinned host tensor
        for tensor in [*module.parameters(), *module.buffers()]:
            if id(tensor) not in self._host:
                self._host[id(tensor)] = _pinned(tensor)
                tensor.data = self._host[id(tensor)]
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
        logger.info("streaming %d modules of %s from pinned memory", units, type(module).__name__)

    def _inputs_to_device(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return _to_device(args, self.device), _to_device(kwargs, self.device)

    def _own_tensors(self, module: nn.Module) -> list[Tensor]:
        return [*module.parameters(recurse=False), *module.buffers(recurse=False)]

    def _load(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        for tensor in self._own_tensors(module):
            tensor.data = self._host[id(tensor)].to(self.device, non_blocking=True)
        result: tuple[Any, ...] = _to_device(args, self.device)
        return result

    def _unload(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        for tensor in self._own_tensors(module):
            tensor.data = self._host[id(tensor)]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
