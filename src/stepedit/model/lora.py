"""LoRA adapters at inference: merged into a DiT's Linear weights, or run beside them as additive
low-rank paths chosen per call.

`LoraSet` holds the adapters loaded for one DiT, each with a default scale (`--lora PATH:SCALE`).
The default set is merged into the weights at load time when they are plain floating-point
tensors (the fast path: no extra work per step). A call that selects another set (other
adapters, other scales, none) runs the difference from the merged set as low-rank paths:
`y = x W'^T + sum_i s_i * (x down_i^T) up_i^T`, with `s_i` = requested scale - merged scale,
so the base weights are never reloaded nor restored. Quantized or FP8-stored weights are never
merged into (their rounding would swallow the change): there every adapter runs as a path.

A path is a forward hook on the Linear; its factors are non-persistent buffers of that Linear
(`lora_down_<slot>`, `lora_up_<slot>`), so they follow `.to(device)` (offload) and stay out of
the state dict. Hooks are added the first time a Linear needs a path, so a DiT that only ever
runs its merged set is untouched (compiled blocks keep their graphs). No I/O here: files are read
by `stepedit.weights.lora`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from stepedit.errors import InvalidInput
from stepedit.request import LoraChoice

logger = logging.getLogger(__name__)

_PATHS = "_stepedit_lora_paths"  # per Linear: [(down buffer, up buffer, scale), ...] this call
_HOOKED = "_stepedit_lora_hook"


@dataclass(frozen=True)
class LowRank:
    """One adapter's change to one Linear: W += scale * (up @ down) * gain, where `gain` is the
    format's own alpha / rank (1 where a format's reader folded it into `up` already)."""

    up: Tensor  # [out, rank]
    down: Tensor  # [rank, in]
    gain: float = 1.0

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    def merge_into(self, linear: nn.Linear, scale: float) -> None:
        """W <- W + scale * (up @ down) * gain in float32, cast back: the official merge, in its
        order of operations (so a merged official-format adapter matches it bit for bit)."""
        weight = linear.weight
        product = self.up.to(weight.device, torch.float32) @ self.down.to(
            weight.device, torch.float32
        )
        with torch.no_grad():  # in place: the Parameter object (and any graph holding it) stays
            weight.copy_((weight.float() + scale * product * self.gain).to(weight.dtype))


@dataclass(frozen=True)
class Adapter:
    """A LoRA file read against a DiT: our Linear module name -> its low-rank change."""

    name: str
    path: str
    format: str  # "official" | "diffusers"
    deltas: dict[str, LowRank]

    @property
    def rank(self) -> int:
        return max((d.rank for d in self.deltas.values()), default=0)


@dataclass
class _Loaded:
    adapter_name: str
    path: str
    format: str
    rank: int
    slot: int
    default_scale: float
    targets: list[str]
    nbytes: int = 0
    fused_scale: float = 0.0  # the scale merged into the weights (0: none)


def is_mergeable(linear: nn.Linear) -> bool:
    """A plain floating-point weight (not float8 storage, not a quantized tensor subclass)."""
    weight = linear.weight
    return (
        type(weight.data) is Tensor
        and weight.dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64)
        and type(linear) is nn.Linear
    )


def _add_paths(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor:
    paths: list[tuple[str, str, float]] = getattr(module, _PATHS)
    if not paths:
        return output
    x = args[0]
    for down_name, up_name, scale in paths:
        down: Tensor = getattr(module, down_name)
        up: Tensor = getattr(module, up_name)
        low = nn.functional.linear(x, down.to(x.dtype))  # [..., rank]
        output = output + scale * nn.functional.linear(low, up.to(x.dtype)).to(output.dtype)
    return output


class LoraSet:
    """The LoRA adapters of one DiT: their default scales, the merged set, per-call selection."""

    def __init__(self, dit: nn.Module, dtype: torch.dtype) -> None:
        self.dit = dit
        self.dtype = dtype  # of the path factors (the pipeline's compute dtype)
        self._loaded: dict[str, _Loaded] = {}
        self._linears: dict[str, nn.Linear] = {}

    # ------------------------------------------------------------------ loading

    def load(self, adapters: Sequence[tuple[Adapter, float]], *, fuse: bool = True) -> None:
        """Register `(adapter, default scale)` pairs; merge the default set when `fuse` and
        every Linear it touches is mergeable."""
        modules = dict(self.dit.named_modules())
        for adapter, _ in adapters:
            if adapter.name in self._loaded:
                raise ValueError(f"a LoRA named {adapter.name!r} is already loaded")
        for adapter, scale in adapters:
            slot = len(self._loaded)
            loaded = _Loaded(
                adapter_name=adapter.name,
                path=adapter.path,
                format=adapter.format,
                rank=adapter.rank,
                slot=slot,
                default_scale=scale,
                targets=sorted(adapter.deltas),
            )
            for module_name, delta in adapter.deltas.items():
                linear = modules.get(module_name)
                if not isinstance(linear, nn.Linear):
                    raise ValueError(f"{adapter.name}: {module_name!r} is not a Linear of the DiT")
                device = linear.weight.device
                down = delta.down.to(device, self.dtype)
                up = (delta.up * delta.gain).to(device, self.dtype)
                linear.register_buffer(f"lora_down_{slot}", down, persistent=False)
                linear.register_buffer(f"lora_up_{slot}", up, persistent=False)
                loaded.nbytes += down.numel() * down.element_size() + up.numel() * up.element_size()
                self._linears[module_name] = linear
            self._loaded[adapter.name] = loaded
        defaults = [(a, s) for a, s in adapters if s != 0.0]
        if fuse and defaults:
            touched = {name for adapter, _ in defaults for name in adapter.deltas}
            blocked = [n for n in sorted(touched) if not is_mergeable(self._linears[n])]
            if blocked:
                logger.info(
                    "LoRA: not merged, %d adapted Linears are quantized or FP8 (e.g. %s): every "
                    "adapter runs as a low-rank path",
                    len(blocked),
                    blocked[0],
                )
            else:
                for adapter, scale in defaults:
                    for module_name, delta in adapter.deltas.items():
                        delta.merge_into(self._linears[module_name], scale)
                    self._loaded[adapter.name].fused_scale = scale
        for info in self.info():
            logger.info("LoRA loaded: %s", info)

    # ------------------------------------------------------------------ per call

    def __len__(self) -> int:
        return len(self._loaded)

    def names(self) -> list[str]:
        return list(self._loaded)

    def defaults(self) -> tuple[LoraChoice, ...]:
        """The set a request without `loras` gets."""
        return tuple(
            LoraChoice(name, loaded.default_scale)
            for name, loaded in self._loaded.items()
            if loaded.default_scale != 0.0
        )

    def check(self, selection: Sequence[LoraChoice] | None) -> None:
        """InvalidInput(param="loras") naming adapters this server has not loaded."""
        if selection is None:
            return
        unknown = [c.name for c in selection if c.name not in self._loaded]
        if unknown:
            known = ", ".join(self._loaded) or "none"
            raise InvalidInput(
                f"loras: {', '.join(map(repr, unknown))} not loaded on this server (loaded: "
                f"{known})",
                param="loras",
            )

    def path_scales(self, selection: Sequence[LoraChoice] | None) -> dict[str, float]:
        """Adapter -> the scale its path runs at for `selection` (requested - merged), nonzero
        entries only; empty when the merged set is what is asked for."""
        wanted = {c.name: c.scale for c in (self.defaults() if selection is None else selection)}
        scales = {}
        for name, loaded in self._loaded.items():
            scale = wanted.get(name, 0.0) - loaded.fused_scale
            if scale != 0.0:
                scales[name] = scale
        return scales

    @contextlib.contextmanager
    def selected(self, selection: Sequence[LoraChoice] | None) -> Iterator[None]:
        """Inside the block the DiT computes base + `selection` (None: the default set)."""
        if not self._loaded:
            yield
            return
        self.check(selection)
        scales = self.path_scales(selection)
        active: list[nn.Linear] = []
        for name, scale in scales.items():
            loaded = self._loaded[name]
            for module_name in loaded.targets:
                linear = self._linears[module_name]
                if not getattr(linear, _HOOKED, False):
                    setattr(linear, _PATHS, [])
                    linear.register_forward_hook(_add_paths)
                    setattr(linear, _HOOKED, True)
                paths: list[tuple[str, str, float]] = getattr(linear, _PATHS)
                paths.append((f"lora_down_{loaded.slot}", f"lora_up_{loaded.slot}", scale))
                active.append(linear)
        try:
            yield
        finally:
            for linear in active:
                getattr(linear, _PATHS).clear()

    # ------------------------------------------------------------------ reporting

    def info(self) -> list[dict[str, Any]]:
        """JSON-ready, one entry per adapter (what `GET /v1/loras` lists)."""
        return [
            {
                "name": name,
                "path": loaded.path,
                "format": loaded.format,
                "rank": loaded.rank,
                "targets": len(loaded.targets),
                "default_scale": loaded.default_scale,
                "merged": loaded.fused_scale != 0.0,
                "path_bytes": loaded.nbytes,
            }
            for name, loaded in self._loaded.items()
        ]
