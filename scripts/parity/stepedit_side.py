"""Every call the harness makes into stepedit, in one module (the API may move; adjust here).

Runs in stepedit's own venv. Each function returns plain tensors or values in the shapes the
reference side returns them, so run.py compares like with like.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import Qwen2_5_VLForConditionalGeneration

import stepedit.pipeline
from mllm_script import Scenario, ScriptedReplies
from stepedit.encoder import INSTRUCTION_PREFIX
from stepedit.images import resize_to_working, to_pil, to_tensor
from stepedit.model.presets import AE_PRESETS, DIT_PRESETS
from stepedit.model.qwen_tiny import CHAT_TEMPLATE, build_tiny_processor, tiny_qwen_config
from stepedit.pipeline import EditPipeline
from stepedit.request import EditRequest
from stepedit.weights import load_components, write_checkpoint
from stepedit.weights.lora import load_loras, parse_lora_specs

Tensors = dict[str, torch.Tensor]

# ----------------------------------------------------------------- models and checkpoints


def chat_template() -> str:
    return CHAT_TEMPLATE


def template_head() -> str:
    """stepedit's rendering of the v1.0/v1.1 template, up to the end of the instruction prefix."""
    processor: Any = build_tiny_processor()
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": INSTRUCTION_PREFIX},
                {"type": "image"},
                {"type": "text", "text": ""},
            ],
        }
    ]
    text: str = processor.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, add_vision_id=True
    )
    return text[: text.index(INSTRUCTION_PREFIX) + len(INSTRUCTION_PREFIX)]


def dit_hyperparameters(version: str) -> dict[str, Any]:
    return dataclasses.asdict(DIT_PRESETS[f"tiny-{version}"])


def ae_hyperparameters() -> dict[str, Any]:
    return dataclasses.asdict(AE_PRESETS["tiny"])


def build_qwen(vocab: dict[str, int], vocab_size: int, seed: int) -> Any:
    """stepedit's tiny Qwen2.5-VL architecture over the Qwen-shaped vocabulary (real ids)."""
    config: Any = tiny_qwen_config(vocab)
    config.text_config.vocab_size = vocab_size
    config.tie_word_embeddings = False
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    return model.eval().requires_grad_(False)


def write_tiny_checkpoint(
    version: str, layout: str, directory: Path, text_model: Any, seed: int
) -> None:
    """The tiny seeded DiT and VAE of `dummy:tiny-<version>`, with `text_model`, in `layout`.

    The Qwen folder this writes (transformers 5's format, stepedit's processor) is replaced by
    the caller with the release's format.
    """
    components = load_components(f"dummy:tiny-{version}@{seed}", device="cpu", dtype=torch.float32)
    components = dataclasses.replace(
        components, text_model=text_model, processor=build_tiny_processor()
    )
    write_checkpoint(components, directory, layout)  # type: ignore[arg-type]


def load(checkpoint: Path) -> EditPipeline:
    return EditPipeline.from_pretrained(checkpoint, device="cpu", dtype=torch.float32)


def load_with_lora(checkpoint: Path, lora: Path, scale: float = 1.0) -> EditPipeline:
    """A fresh pipeline with `lora` applied as `stepedit edit --lora PATH:SCALE` applies it
    (merged into the DiT's weights)."""
    pipe = load(checkpoint)
    load_loras(pipe, parse_lora_specs([f"{lora}:{scale:g}"]))
    return pipe


def describe(pipe: EditPipeline) -> str:
    return f"{pipe.version} ({pipe.components.source_layout} layout, numerics {pipe.reference})"


# ----------------------------------------------------------------- module checks


def prefix_tokens(pipe: EditPipeline) -> int:
    """Tokens of the template head by stepedit's count: the embedding drops all but the last."""
    return int(pipe.encoder.prefix_length) + 1  # type: ignore[union-attr]


@torch.inference_mode()
def dit_forward(pipe: EditPipeline, inputs: Tensors) -> torch.Tensor:
    extra: dict[str, torch.Tensor] = {}
    if pipe.version == "v1.2":
        extra = {
            "text_embeddings": inputs["dit/text_embeddings"],
            "text_mask": inputs["dit/text_mask"],
        }
    out: torch.Tensor = pipe.dit(
        img=inputs["dit/img"],
        img_ids=inputs["dit/img_ids"],
        txt_ids=inputs["dit/txt_ids"],
        timesteps=inputs["dit/t"],
        llm_embedding=inputs["dit/llm_embedding"],
        t_vec=inputs["dit/t"],
        mask=inputs["dit/mask"],
        **extra,
    )
    return out


@torch.inference_mode()
def vae_moments(pipe: EditPipeline, x: torch.Tensor) -> torch.Tensor:
    moments: torch.Tensor = pipe.ae.encoder(x)
    return moments


@torch.inference_mode()
def vae_decode(pipe: EditPipeline, z: torch.Tensor) -> torch.Tensor:
    pixels: torch.Tensor = pipe.ae.decode(z)
    return pixels


def working_image(pipe: EditPipeline, source: Image.Image, size_level: int) -> Image.Image:
    """The source at the working size, resized as the pipeline resizes it."""
    resample = {"bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}
    return resize_to_working(source, size_level, resample[pipe.spec.working_resample])


def qwen_view(pipe: EditPipeline, working: Image.Image) -> Image.Image:
    """The image the pipeline hands its encoder for a working-size image (official numerics:
    after the float round trip)."""
    if pipe.reference == "official":
        return to_pil(to_tensor(working)[0])
    return working


@torch.inference_mode()
def encode(pipe: EditPipeline, prompts: Sequence[str], working: Image.Image) -> Tensors:
    """v1.0/v1.1: emb [2, 640, C], mask [2, 640]; v1.2: each row's fields, unpadded."""
    view = qwen_view(pipe, working)
    rows = [pipe.encoder.encode(prompt, view) for prompt in prompts]
    if pipe.version != "v1.2":
        return {
            "emb": torch.cat([r.emb for r in rows]),
            "mask": torch.cat([r.mask for r in rows]),
        }
    out: Tensors = {}
    for name, row in zip(("positive", "negative"), rows, strict=True):
        assert row.text_embeds is not None and row.text_mask is not None
        out.update(
            {
                f"{name}.emb": row.emb,
                f"{name}.mask": row.mask,
                f"{name}.txt_ids": row.txt_ids,
                f"{name}.text_embeds": row.text_embeds,
                f"{name}.text_mask": row.text_mask,
            }
        )
    return out


# ----------------------------------------------------------------- whole edits


def _request(params: dict[str, Any], **overrides: Any) -> EditRequest:
    return EditRequest(
        prompt=params["prompt"],
        negative_prompt=params["negative_prompt"],
        seed=params["seed"],
        num_inference_steps=params["steps"],
        guidance_scale=params["guidance_scale"],
        size_level=params["size_level"],
        cfg_rescale=params["cfg_rescale"],
        **overrides,
    )


def _pack(latents: torch.Tensor) -> torch.Tensor:
    b, c, h, w = latents.shape
    x = latents.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def _uint8(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB")).copy())


def _recording_decoder(pipe: EditPipeline) -> tuple[list[torch.Tensor], Callable[[], None]]:
    """Record the VAE decoder's output (before clamping and quantization); returns an undo."""
    seen: list[torch.Tensor] = []
    original = pipe.ae.decode

    def decode(z: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = original(z)
        seen.append(out.clone())
        return out

    pipe.ae.decode = decode

    def undo() -> None:
        pipe.ae.decode = original

    return seen, undo


def edit(
    pipe: EditPipeline,
    source: Image.Image,
    params: dict[str, Any],
    latents: torch.Tensor | None,
) -> Tensors:
    """Final latents (packed [1, L, 64]), the decoder's output, the final uint8 image."""
    decoded, undo = _recording_decoder(pipe)
    overrides = {"enable_thinking": False, "enable_reflection": False}
    if pipe.version != "v1.2":
        overrides = {}
    try:
        out = pipe(source, _request(params, **overrides), latents=latents)
    finally:
        undo()
    assert out.latents is not None
    return {
        "latents": _pack(out.latents),
        "decoded": decoded[-1],
        "image": _uint8(out.images[0]),
    }


# ----------------------------------------------------------------- v1.2 reasoning


def _system_text(conversation: Sequence[Any]) -> str:
    for turn in conversation:
        if turn.role == "system":
            return " ".join(str(p) for p in turn.parts if isinstance(p, str))
    return ""


def reasoning(
    pipe: EditPipeline, source: Image.Image, params: dict[str, Any], scenario: Scenario
) -> tuple[Tensors, dict[str, Any]]:
    """The pipeline's reasoning edit with scripted MLLM replies: its control flow, and each
    round's candidate image (at the source's size)."""
    replies = ScriptedReplies(scenario.all_replies())
    results: list[Any] = []
    original_run = stepedit.pipeline.run_reasoning_edit

    def recording_run(*args: Any, **kwargs: Any) -> Any:
        result = original_run(*args, **kwargs)
        results.append(result)
        return result

    pipe.text_generator = lambda conversation, *, max_new_tokens: replies.answer(
        _system_text(conversation)
    )
    stepedit.pipeline.run_reasoning_edit = recording_run
    try:
        out = pipe(
            source,
            _request(params, enable_thinking=scenario.thinking, enable_reflection=True),
        )
    finally:
        stepedit.pipeline.run_reasoning_edit = original_run
    rounds = [{"instruction": r.instruction, "edits": r.edits} for r in out.rounds]
    images = {f"round{i}": _uint8(r.image) for i, r in enumerate(results[-1].rounds)}
    trace = {"rounds": rounds, "chosen": out.best_round, "mllm_calls": replies.calls}
    return images, trace
