"""Reuse MLLM encodings of (prompt, image) pairs seen recently, above all the negative prompt.

Step1X-Edit encodes the negative prompt together with the input image, so its encoding differs
per image; the cache pays off when one image is edited several times (the playground, retries,
several prompts per image), where it halves the MLLM work of every edit after the first. Each
pair is encoded on its own by the reference encoder and padded to a fixed length, so a cached
entry is the very tensor a fresh encode would give.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image
from torch import Tensor

EncodeFn = Callable[[list[str], list[Image.Image]], Any]


def image_digest(image: Image.Image) -> str:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{image.mode}:{image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def _pad_cat(parts: Sequence[Tensor]) -> Tensor:
    """Concatenate [1, L_i, ...] tensors along the batch, zero-padding dim 1 to the longest."""
    if len({p.shape[1:] for p in parts}) == 1 or parts[0].ndim < 2:
        return torch.cat(list(parts), dim=0)
    length = max(p.shape[1] for p in parts)
    padded = []
    for part in parts:
        pad = part.new_zeros((part.shape[0], length - part.shape[1], *part.shape[2:]))
        padded.append(torch.cat((part, pad), dim=1))
    return torch.cat(padded, dim=0)


class CachedEncoder:
    """Wraps an encoder callable `(prompts, images) -> tuple of [B, ...] tensors` with an LRU."""

    def __init__(self, encode: EncodeFn, *, capacity: int = 16) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._encode = encode
        self.capacity = capacity
        self._entries: OrderedDict[tuple[str, str], tuple[Tensor, ...]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __call__(
        self, prompts: list[str], images: list[Image.Image], *, use_cache: bool = True
    ) -> Any:
        if len(prompts) != len(images):
            raise ValueError(f"{len(prompts)} prompts for {len(images)} images")
        keys = [(p, image_digest(im)) for p, im in zip(prompts, images, strict=True)]
        missing = [i for i, key in enumerate(keys) if key not in self._entries]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        fresh: dict[tuple[str, str], tuple[Tensor, ...]] = {}
        if missing:
            result = self._encode([prompts[i] for i in missing], [images[i] for i in missing])
            outputs = tuple(result) if isinstance(result, tuple | list) else (result,)
            for row, i in enumerate(missing):
                fresh[keys[i]] = tuple(t[row : row + 1] for t in outputs)
        per_item = [fresh[key] if key in fresh else self._entries[key] for key in keys]
        for key, value in fresh.items():
            self._entries[key] = value
        for key in keys:
            self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        stacked = tuple(_pad_cat([item[j] for item in per_item]) for j in range(len(per_item[0])))
        return stacked if len(stacked) > 1 else stacked[0]

    def clear(self) -> None:
        self._entries.clear()

    def __getattr__(self, name: str) -> Any:
        # Everything else (generate, device, ...) is the wrapped encoder's.
        return getattr(self._encode, name)
