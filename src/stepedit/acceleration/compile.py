"""torch.compile of the DiT's repeated blocks, one compiled graph shared in shape by all blocks.

Compiling each double/single block instead of the whole DiT keeps compile time to two block
graphs (the blocks of one kind have identical code and shapes, so they reuse one compiled
artefact) and leaves the Python glue between blocks (connector, step cache, CFG split) eager.

dynamic=False: each new token count (image size) or batch (1 or 2 with batched CFG) compiles once
more, a few seconds per block kind on an H100, then hits the cache. The server sees a handful of
sizes (512/768/1024 at the size levels), so we raise dynamo's recompile limit to hold them all
rather than trace symbolic shapes, which costs speed on every step.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from stepedit.acceleration.config import CompileMode

logger = logging.getLogger(__name__)

# sizes x (cond+uncond batched or not) x versions of guards; generous but bounded.
RECOMPILE_LIMIT = 64


def raise_recompile_limit(limit: int = RECOMPILE_LIMIT) -> None:
    config = torch._dynamo.config
    # Renamed from cache_size_limit to recompile_limit in PyTorch 2.7.
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name) and getattr(config, name) < limit:
            setattr(config, name, limit)


def compile_blocks(dit: nn.Module, mode: CompileMode = "default") -> int:
    """Compile every module in `dit.double_blocks` and `dit.single_blocks` in place.

    Parameter names, and so the state dict, are unchanged (`nn.Module.compile` wraps the call,
    not the module). Returns the number of blocks compiled.
    """
    raise_recompile_limit()
    count = 0
    for blocks_name in ("double_blocks", "single_blocks"):
        blocks = getattr(dit, blocks_name)
        for block in blocks:
            block.compile(mode=mode, dynamic=False, fullgraph=False)
            count += 1
    logger.info("compiled %d DiT blocks (mode=%s, dynamic=False)", count, mode)
    return count
