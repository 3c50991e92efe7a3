"""First-block cache: reuse the residual of most of the DiT on steps where its input barely moves.

Idea from ParaAttention's FBCache (after TeaCache, https://arxiv.org/abs/2411.19108): the first
double block always runs; the relative L1 change of its output residual (output - input) against
the last fully computed step tells how much the whole network's output will change. Below the
threshold, the remaining blocks are skipped and the joint hidden state after them is rebuilt as
"first block output + residual of the remaining blocks cached at the last full step".

`StepCachedDiT` wraps a DiT and uses the DiT's own submodules: for the duration of one forward it
swaps `double_blocks` / `single_blocks` for thin gates around the same block modules, so the
DiT's forward (connector, embedders, final layer) runs unchanged and nothing is copied. The
state dict of the wrapped DiT is untouched.

The cache keeps one state per CFG branch, keyed by the text conditioning the call carries (the
sampler passes the same tensors at every step: one batched [positive | negative] tensor, or the
positive and the negative ones in two forwards, as for v1.2's unpadded prompts of different
lengths). A call with new text tensors beyond two branches, at a timestep not below its branch's
last one, or with new shapes, starts a new edit and clears the state.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from stepedit.acceleration.config import StepCacheConfig


@dataclass
class StepCacheStats:
    computed: int = 0  # DiT forwards that ran every block
    skipped: int = 0  # DiT forwards that reused the cached residual

    @property
    def total(self) -> int:
        return self.computed + self.skipped


@dataclass
class _BranchState:
    last_timestep: float | None = None
    shapes: tuple[tuple[int, ...], ...] = ()
    steps_seen: int = 0
    consecutive_skips: int = 0
    first_residual: Tensor | None = None  # at the last full step
    rest_residual: Tensor | None = None  # joint output of the last single block - its input
    skipping: bool = False
    first_joint: Tensor | None = None  # this step's first-block outputs as (txt, img)
    stats: StepCacheStats = field(default_factory=StepCacheStats)


def relative_l1(current: Tensor, previous: Tensor) -> float:
    """mean |current - previous| / mean |previous|, computed in float32."""
    previous = previous.float()
    denominator = previous.abs().mean()
    return float((current.float() - previous).abs().mean() / denominator.clamp_min(1e-12))


def _blocks(dit: nn.Module, name: str) -> nn.ModuleList:
    blocks = getattr(dit, name)
    if not isinstance(blocks, nn.ModuleList):
        raise TypeError(f"expected {type(dit).__name__}.{name} to be an nn.ModuleList")
    return blocks


class _FirstBlockGate(nn.Module):
    def __init__(self, block: nn.Module, cache: StepCachedDiT) -> None:
        super().__init__()
        self.block = block
        self._cache = [cache]  # a list, so the wrapper is not registered as a child module
        self._signature = inspect.signature(block.forward)

    def forward(self, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        img_in = self._signature.bind(*args, **kwargs).arguments["img"]
        img, txt = self.block(*args, **kwargs)
        self._cache[0]._after_first_block(img_in, img, txt)
        return img, txt


class _DoubleGate(nn.Module):
    def __init__(self, block: nn.Module, cache: StepCachedDiT) -> None:
        super().__init__()
        self.block = block
        self._cache = [cache]
        self._signature = inspect.signature(block.forward)

    def forward(self, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        if self._cache[0]._state.skipping:
            bound = self._signature.bind(*args, **kwargs).arguments
            return bound["img"], bound["txt"]
        result: tuple[Tensor, Tensor] = self.block(*args, **kwargs)
        return result


class _SingleGate(nn.Module):
    def __init__(self, block: nn.Module, cache: StepCachedDiT, is_last: bool) -> None:
        super().__init__()
        self.block = block
        self._cache = [cache]
        self.is_last = is_last

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        state = self._cache[0]._state
        if state.skipping:
            if not self.is_last:
                return x
            assert state.rest_residual is not None
            return x + state.rest_residual
        out: Tensor = self.block(x, *args, **kwargs)
        if self.is_last:
            self._cache[0]._after_last_block(out)
        return out


class StepCachedDiT(nn.Module):
    """A DiT whose forward skips all but the first block on steps the cache deems unchanged."""

    def __init__(self, dit: nn.Module, config: StepCacheConfig) -> None:
        super().__init__()
        doubles: list[nn.Module] = list(_blocks(dit, "double_blocks"))
        singles: list[nn.Module] = list(_blocks(dit, "single_blocks"))
        if not doubles or not singles:
            raise ValueError("the step cache needs at least one double and one single block")
        self.dit = dit
        self.cache_config = config
        # Plain tuples: the gates hold the DiT's own blocks, which must not be registered twice.
        self._gated_double = (
            nn.ModuleList(
                [_FirstBlockGate(doubles[0], self)] + [_DoubleGate(b, self) for b in doubles[1:]]
            ),
        )
        self._gated_single = (
            nn.ModuleList(
                [_SingleGate(b, self, is_last=i == len(singles) - 1) for i, b in enumerate(singles)]
            ),
        )
        self._states: dict[tuple[int, tuple[int, ...]], _BranchState] = {}
        self._state = _BranchState()
        self._last_timestep: float | None = None
        self._earlier = StepCacheStats()  # edits started since the last reset(), finished

    @property
    def config(self) -> Any:
        """The wrapped DiT's model config, so callers can treat the wrapper as the DiT."""
        return self.dit.config

    # -- public ---------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget everything cached and counted; call between edits when they may be
        interrupted."""
        self._start_edit()
        self._earlier = StepCacheStats()

    def stats(self) -> StepCacheStats:
        """Computed and skipped forwards since the last reset, summed over the CFG branches and
        over the edits begun since (a reasoning request's rounds are one edit each)."""
        total = StepCacheStats(self._earlier.computed, self._earlier.skipped)
        for state in self._states.values():
            total.computed += state.stats.computed
            total.skipped += state.stats.skipped
        return total

    def forward(self, img: Tensor, img_ids: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        timesteps = kwargs.get("timesteps", args[1] if len(args) > 1 else None)
        text = kwargs.get("llm_embedding", args[2] if len(args) > 2 else None)
        if not isinstance(timesteps, Tensor) or not isinstance(text, Tensor):
            raise TypeError("StepCachedDiT needs the timesteps and llm_embedding tensors")
        branch = (text.data_ptr(), tuple(text.shape))
        self._select_branch(branch, float(timesteps.flatten()[0]), (tuple(img.shape),))
        with self._gated_blocks():
            out: Tensor = self.dit(img, img_ids, *args, **kwargs)
        state = self._state
        state.steps_seen += 1
        if state.skipping:
            state.stats.skipped += 1
            state.consecutive_skips += 1
        else:
            state.stats.computed += 1
            state.consecutive_skips = 0
        state.first_joint = None
        return out

    # -- internals ------------------------------------------------------------------------------

    def _select_branch(
        self,
        branch: tuple[int, tuple[int, ...]],
        timestep: float,
        shapes: tuple[tuple[int, ...], ...],
    ) -> None:
        # A new edit: time went back up, the same text tensors came again from the top, a
        # third branch appeared, or the shapes changed.
        state = self._states.get(branch)
        is_new_edit = (
            (self._last_timestep is not None and timestep > self._last_timestep)
            or (state is None and len(self._states) >= 2)
            or (
                state is not None
                and (
                    state.shapes != shapes
                    or (state.last_timestep is not None and timestep >= state.last_timestep)
                )
            )
        )
        if is_new_edit:
            self._start_edit()
            state = None
        if state is None:
            state = self._states[branch] = _BranchState()
        state.shapes = shapes
        state.last_timestep = timestep
        state.skipping = False
        self._state = state
        self._last_timestep = timestep

    def _start_edit(self) -> None:
        for finished in self._states.values():
            self._earlier.computed += finished.stats.computed
            self._earlier.skipped += finished.stats.skipped
        self._states = {}
        self._state = _BranchState()
        self._last_timestep = None

    @contextmanager
    def _gated_blocks(self) -> Iterator[None]:
        dit = self.dit
        saved_double, saved_single = dit.double_blocks, dit.single_blocks
        dit.double_blocks = self._gated_double[0]
        dit.single_blocks = self._gated_single[0]
        try:
            yield
        finally:
            dit.double_blocks, dit.single_blocks = saved_double, saved_single

    @torch.no_grad()
    def _after_first_block(self, img_in: Tensor, img: Tensor, txt: Tensor) -> None:
        state = self._state
        residual = img - img_in
        # The DiT joins the streams as (txt, img) before the single blocks. A fresh tensor, not
        # the block's output buffer, which CUDA-graph compile modes reuse on the next call.
        state.first_joint = torch.cat((txt, img), dim=1)
        can_skip = (
            state.steps_seen >= self.cache_config.warmup_steps
            and state.consecutive_skips < self.cache_config.max_consecutive_skips
            and state.first_residual is not None
            and state.rest_residual is not None
            and self.cache_config.threshold > 0
            and relative_l1(residual, state.first_residual) < self.cache_config.threshold
        )
        state.skipping = can_skip
        if not can_skip:
            state.first_residual = residual

    @torch.no_grad()
    def _after_last_block(self, out: Tensor) -> None:
        state = self._state
        assert state.first_joint is not None
        state.rest_residual = out - state.first_joint
