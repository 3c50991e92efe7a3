"""Qwen2.5-VL's processor as stepedit uses it: the chat template and a processor without video.

The model itself is transformers' own `Qwen2_5_VLForConditionalGeneration`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers import Qwen2_5_VLProcessor, TensorType
from transformers.image_processing_base import BatchFeature
from transformers.image_utils import SizeDict
from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
    Qwen2VLImageProcessorPil,
    smart_resize,
)

# Qwen2.5-VL-Instruct's chat template: a default system turn when the conversation has none,
# "Picture N: " before each image when add_vision_id is set, and the assistant header last.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}"
    "{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class ImageTextProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL's processor without the video processor.

    transformers' video processors need torchvision, which stepedit does not depend on; Step1X-Edit
    never feeds videos. Text and image handling are the parent's, unchanged.
    """

    def __init__(
        self,
        image_processor: Qwen2VLImageProcessorPil | None = None,
        tokenizer: Qwen2Tokenizer | None = None,
        chat_template: str | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class TensorQwenImageProcessor(Qwen2VLImageProcessorPil):
    """Qwen2.5-VL's image preprocessing as transformers' torchvision ("fast") processor computes
    it, in plain torch (no torchvision).

    The diffusers pipelines' processor loads as the fast one wherever torchvision is installed
    (transformers >= 4.52), the official code's as the PIL one; the two differ by up to 0.03 in
    pixel values. The fast path: uint8 pixels resized with antialiased bicubic interpolation on the
    uint8 tensor itself (channels-last, as `pil_to_tensor` lays it out), then one fused
    rescale-and-normalize in float32: (x - 255 mean) / (255 std).
    """

    def _preprocess(  # type: ignore[override]
        self,
        images: list[np.ndarray],
        do_resize: bool,
        size: SizeDict,
        resample: Any,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean: float | list[float] | None,
        image_std: float | list[float] | None,
        patch_size: int,
        temporal_patch_size: int,
        merge_size: int,
        return_tensors: str | TensorType | None,
        **kwargs: Any,
    ) -> BatchFeature:
        if not (do_rescale and do_normalize) or image_mean is None or image_std is None:
            raise ValueError("the tensor path implements the fused rescale-and-normalize only")
        mean = torch.tensor(image_mean) * (1.0 / rescale_factor)  # float32, as the fast path
        std = torch.tensor(image_std) * (1.0 / rescale_factor)
        all_patches, all_grids = [], []
        for image in images:
            # [C, H, W] uint8 with channels-last strides, as torchvision's pil_to_tensor gives it
            pixels = torch.from_numpy(np.ascontiguousarray(np.moveaxis(image, 0, -1)))
            pixels = pixels.permute(2, 0, 1).unsqueeze(0)  # [1, C, H, W]
            height, width = pixels.shape[-2:]
            if do_resize:
                if size.shortest_edge is None or size.longest_edge is None:
                    raise ValueError(f"size needs shortest_edge and longest_edge, got {size}")
                new_height, new_width = smart_resize(
                    height,
                    width,
                    factor=patch_size * merge_size,
                    min_pixels=size.shortest_edge,
                    max_pixels=size.longest_edge,
                )
                if (new_height, new_width) != (height, width):
                    pixels = torch.nn.functional.interpolate(
                        pixels,
                        size=[new_height, new_width],
                        mode="bicubic",
                        align_corners=False,
                        antialias=True,
                    )
            normalized = (pixels[0].to(torch.float32) - mean[:, None, None]) / std[:, None, None]
            patches, grid_h, grid_w = self.patchify(
                normalized.numpy(),
                patch_size=patch_size,
                merge_size=merge_size,
                temporal_patch_size=temporal_patch_size,
            )
            all_patches.append(patches)
            all_grids.append([1, grid_h, grid_w])
        return BatchFeature(
            data={
                "pixel_values": np.concatenate(all_patches, axis=0),
                "image_grid_thw": np.array(all_grids, dtype=np.int64),
            },
            tensor_type=return_tensors,
        )


def with_tensor_image_processor(processor: ImageTextProcessor) -> ImageTextProcessor:
    """A copy of `processor` whose images go through `TensorQwenImageProcessor` (same settings)."""
    image_processor = TensorQwenImageProcessor(**processor.image_processor.to_dict())
    return ImageTextProcessor(
        image_processor=image_processor,
        tokenizer=processor.tokenizer,
        chat_template=processor.chat_template or CHAT_TEMPLATE,  # type: ignore[arg-type]
    )
