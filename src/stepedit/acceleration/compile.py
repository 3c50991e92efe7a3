"""torch.compile of the DiT's repeated blocks, one compiled graph shared by all blocks of a kind.

Compiling each double/single block instead of the whole DiT keeps compile time to two block
graphs (the blocks of one kind have identical code and shapes, so they reuse one compiled
artefact) and leaves the Python glue between blocks (connector, step cache, CFG split) eager.

Shapes. With `dynamic=True` the token counts (image tokens: every size and aspect ratio; text
tokens: v1.2's unpadded prompts) are symbolic from the first compile, so one graph per block
kind and batch layout serves every request: the warm-up at start-up
(`stepedit.acceleration.warmup`) compiles it, and no user's edit ever waits for a compile.
Batch 1 is specialised by PyTorch (a size-1 dimension always is), so batched CFG (2 rows) and a
forward of one row are two graphs. With `dynamic=False` every new token count compiles again
during the edit that brings it, and past dynamo's recompile limit a block silently runs eager:
`compile_report()` counts the compiled frames and the limit hits, and the bench reports them.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from stepedit.acceleration.config import CompileMode

logger = logging.getLogger(__name__)

# Graphs per block code object: batch layouts x (with dynamic=False) sizes. Generous but bounded.
RECOMPILE_LIMIT = 64


def raise_recompile_limit(limit: int = RECOMPILE_LIMIT) -> None:
    config: Any = torch._dynamo.config
    # Renamed from cache_size_limit to recompile_limit in PyTorch 2.7 (the old name is an alias
    # up to 2.15 at least).
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name) and getattr(config, name) < limit:
            setattr(config, name, limit)
            break


def compile_blocks(dit: nn.Module, mode: CompileMode = "default", *, dynamic: bool = True) -> int:
    """Compile every module in `dit.double_blocks` and `dit.single_blocks` in place.

    Parameter names, and so the state dict, are unchanged (`nn.Module.compile` wraps the call,
    not the module). Returns the number of blocks compiled.
    """
    raise_recompile_limit()
    watch_recompile_limit()
    count = 0
    for blocks_name in ("double_blocks", "single_blocks"):
        blocks = getattr(dit, blocks_name)
        for block in blocks:
            block.compile(mode=mode, dynamic=dynamic, fullgraph=False)
            count += 1
    logger.info("compiled %d DiT blocks (mode=%s, dynamic=%s)", count, mode, dynamic)
    return count


class _RecompileLimitWatch(logging.Handler):
    """Counts dynamo's "hit config.recompile_limit" warnings and repeats them as errors: past
    the limit a block runs eager for the rest of the process, which must not go unnoticed."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.hits = 0

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "hit config." in message and "limit" in message:
            self.hits += 1
            logger.error(
                "torch.compile gave up recompiling a DiT block, which now runs EAGER (slow): %s",
                message.splitlines()[0],
            )


_watch = _RecompileLimitWatch()


def watch_recompile_limit() -> None:
    """Attach the watch to dynamo's frame-conversion logger (once per process)."""
    dynamo_log = logging.getLogger("torch._dynamo.convert_frame")
    if _watch not in dynamo_log.handlers:
        dynamo_log.addHandler(_watch)


def compile_report() -> dict[str, int]:
    """Process-wide counts: graphs dynamo compiled, and recompile-limit hits since the watch.

    After the warm-up, `compiled_graphs` should not grow from one edit to the next; a growing
    count is a compile on the request path, and `recompile_limit_hits` > 0 means a block now
    runs eager.
    """
    counters: Any = torch._dynamo.utils.counters
    return {
        "compiled_graphs": int(counters["stats"].get("unique_graphs", 0)),
        "recompile_limit_hits": _watch.hits,
    }
