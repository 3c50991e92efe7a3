"""CFG-parallel on two GPUs: rank 0 runs the positive-prompt half of the batch, rank 1 the negative.

`CFGParallelDiT` wraps a DiT and is called exactly like it, with the batched-CFG layout the
sampler uses (`denoise(..., batch_cfg=True)`: the B positive rows, then the B negative rows).
Each rank computes its half and an all-gather returns the full [2B, ...] prediction to both,
so the Euler update, and so the result, is the same as on one device. Launch with
`torchrun --nproc-per-node 2` (NCCL on GPUs, gloo on CPU for tests).
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

WORLD_SIZE = 2


def init_cfg_parallel(backend: str | None = None) -> torch.device:
    """Join the process group torchrun set up; returns this rank's device.

    With NCCL the rank's GPU (LOCAL_RANK) is made current and bound to the group
    (`device_id`) before the first collective, so NCCL neither guesses the device nor warns.
    """
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    device = torch.device("cpu")
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise RuntimeError("CFG-parallel over NCCL needs CUDA devices")
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        options = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, **options)  # type: ignore[arg-type]
    if dist.get_world_size() != WORLD_SIZE:
        size = dist.get_world_size()
        raise RuntimeError(f"CFG-parallel needs exactly {WORLD_SIZE} ranks, got {size}")
    return device


def _half(value: Any, rank: int, batch: int) -> Any:
    if isinstance(value, Tensor) and value.ndim >= 1 and value.shape[0] == batch:
        return value.chunk(WORLD_SIZE, dim=0)[rank]
    return value


class CFGParallelDiT(nn.Module):
    def __init__(self, dit: nn.Module, group: dist.ProcessGroup | None = None) -> None:
        super().__init__()
        self.dit = dit
        self.group = group

    @property
    def config(self) -> Any:
        return self.dit.config

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        img = kwargs["img"] if "img" in kwargs else args[0]
        batch = img.shape[0]
        if batch % WORLD_SIZE:
            # No guidance (or an odd batch): nothing to split; every rank computes it all.
            out: Tensor = self.dit(*args, **kwargs)
            return out
        rank = dist.get_rank(self.group)
        local_args = [_half(a, rank, batch) for a in args]
        local_kwargs = {k: _half(v, rank, batch) for k, v in kwargs.items()}
        local: Tensor = self.dit(*local_args, **local_kwargs).contiguous()
        gathered = torch.empty((batch, *local.shape[1:]), dtype=local.dtype, device=local.device)
        if dist.get_backend(self.group) == "nccl":
            dist.all_gather_into_tensor(gathered, local, group=self.group)
        else:
            dist.all_gather(list(gathered.chunk(WORLD_SIZE, dim=0)), local, group=self.group)
        return gathered
