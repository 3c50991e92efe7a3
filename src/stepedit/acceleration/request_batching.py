"""Run several same-size edits through one denoise loop by stacking them along the batch.

Every DiT input is per row (attention, modulation and RoPE never mix rows), and the MLLM
encodings are padded to the same fixed length, so a stacked batch gives each request the result
it would get alone, up to float rounding of the larger matmuls. Requests group by token count
and text length; `stack_requests` lays them out as `sampling.denoise` expects and
`split_rows` hands each request its rows back.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class DenoiseRequest:
    """One edit's denoise inputs: B rows of image tokens and, with guidance, 2B text rows
    (B positive then B negative), as `sampling.denoise` takes them."""

    img: Tensor  # [B, L_img, 64]
    img_ids: Tensor  # [B, L_img + L_ref, 3]
    ref_img: Tensor | None  # [B, L_ref, 64]
    txt_ids: Tensor  # [B or 2B, L_txt, 3]
    llm_embedding: Tensor  # [B or 2B, L_txt, C]
    mask: Tensor  # [B or 2B, L_txt]
    text_embeddings: Tensor | None = None
    text_mask: Tensor | None = None

    @property
    def rows(self) -> int:
        return int(self.img.shape[0])

    @property
    def shape_key(self) -> tuple[object, ...]:
        ref = None if self.ref_img is None else tuple(self.ref_img.shape[1:])
        return (
            tuple(self.img.shape[1:]),
            tuple(self.img_ids.shape[1:]),
            ref,
            tuple(self.llm_embedding.shape[1:]),
            self.text_embeddings is None,
            self.llm_embedding.shape[0] // self.img.shape[0],  # 1 without guidance, 2 with
        )


def group_by_shape(requests: Sequence[DenoiseRequest]) -> list[list[int]]:
    """Indices of requests that can share one batch, in arrival order within each group."""
    groups: dict[tuple[object, ...], list[int]] = defaultdict(list)
    for i, request in enumerate(requests):
        groups[request.shape_key].append(i)
    return list(groups.values())


def _cat_text(parts: Sequence[Tensor], rows: Sequence[int], guided: bool) -> Tensor:
    if not guided:
        return torch.cat(list(parts))
    # Keep the sampler's layout: every positive row first, then every negative row.
    positive = [p[:n] for p, n in zip(parts, rows, strict=True)]
    negative = [p[n:] for p, n in zip(parts, rows, strict=True)]
    return torch.cat(positive + negative)


def stack_requests(requests: Sequence[DenoiseRequest]) -> DenoiseRequest:
    """One DenoiseRequest holding every row of `requests` (which must share a shape_key)."""
    if not requests:
        raise ValueError("no requests to stack")
    keys = {r.shape_key for r in requests}
    if len(keys) != 1:
        raise ValueError("requests differ in image size or text layout; group_by_shape first")
    rows = [r.rows for r in requests]
    guided = requests[0].llm_embedding.shape[0] == 2 * requests[0].rows

    def optional(parts: list[Tensor | None]) -> Tensor | None:
        if parts[0] is None:
            return None
        return _cat_text([p for p in parts if p is not None], rows, guided)

    refs = [r.ref_img for r in requests if r.ref_img is not None]
    return DenoiseRequest(
        img=torch.cat([r.img for r in requests]),
        img_ids=torch.cat([r.img_ids for r in requests]),
        ref_img=torch.cat(refs) if refs else None,
        txt_ids=_cat_text([r.txt_ids for r in requests], rows, guided),
        llm_embedding=_cat_text([r.llm_embedding for r in requests], rows, guided),
        mask=_cat_text([r.mask for r in requests], rows, guided),
        text_embeddings=optional([r.text_embeddings for r in requests]),
        text_mask=optional([r.text_mask for r in requests]),
    )


def split_rows(output: Tensor, requests: Sequence[DenoiseRequest]) -> list[Tensor]:
    """Split a denoised [sum B_i, ...] batch back into one tensor per request."""
    return list(output.split([r.rows for r in requests], dim=0))
