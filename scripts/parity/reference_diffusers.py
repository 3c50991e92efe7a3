"""The Peyton-Chen/diffusers Step1X-Edit pipelines run on the harness's tiny checkpoint.

Runs in the reference venv with the given checkout's `src` first on sys.path (branch
step1xedit: `Step1XEditPipeline`, v1.1; branch step1xedit_v1p2: `Step1XEditPipelineV1P2` and its
thinker, v1.2). The pipeline is loaded with `from_pretrained` from the checkpoint folder; only
the transformer is built here, because the v1.2 transformer hard-codes its `text_token_mapping`
as Linear(3584, 4096), the full-size Qwen and connector widths: the tiny model's is put in its
place before the checkpoint's weights are loaded strictly.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn

import reference_patches as patches
from exchange import Job
from mllm_script import ScriptedReplies, scenario_named

Outputs = tuple[dict[str, torch.Tensor], dict[str, Any]]


def _pack(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] -> [B, (h/2)(w/2), 4C] (2x2 patches), the pipelines' `_pack_latents`."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


class Diffusers:
    def __init__(self, job: Job) -> None:
        self.job = job
        self.params = job.params
        self.checkpoint = Path(job.checkpoint)
        sys.path.insert(0, str(Path(job.ref_dir) / "src"))
        patches.redirect_cuda_to_cpu()
        import diffusers

        self.diffusers = diffusers
        self.is_v12 = job.version == "v1.2"
        name = "pipeline_step1x_edit_v1p2" if self.is_v12 else "pipeline_step1x_edit"
        module = __import__(f"diffusers.pipelines.step1x_edit.{name}", fromlist=["_"])
        self.pipeline_module: ModuleType = module
        self.pipeline_class = (
            module.Step1XEditPipelineV1P2 if self.is_v12 else module.Step1XEditPipeline
        )
        patches.diffusers_embeds_float32(self.pipeline_class)
        self.noise = patches.Noise()
        patches.diffusers_noise(module, self.noise)
        self._pipe: Any = None

    @property
    def pipe(self) -> Any:
        if self._pipe is None:
            self._pipe = self._load_pipeline()
        return self._pipe

    def _load_pipeline(self) -> Any:
        pipe = self.pipeline_class.from_pretrained(
            str(self.checkpoint), transformer=self._transformer(), torch_dtype=torch.float32
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def _pipeline_with_lora(self) -> Any:
        """A second pipeline, on a fresh transformer, with the job's LoRA loaded the one way
        these branches offer: the pipelines have no `load_lora_weights`, the transformer has
        diffusers' PEFT mixin (`load_lora_adapter`, PEFT layers at weight 1.0, unmerged).

        `use_safetensors=True`, as diffusers' pipeline loaders (`lora_state_dict`) pass it:
        given a file path without it, `load_lora_adapter` takes its non-safetensors branch,
        which reads the tensors but not the header's `lora_adapter_metadata` (lora_alpha then
        falls back to the first module's rank)."""
        pipe = self._load_pipeline()
        pipe.transformer.load_lora_adapter(
            self.params["lora_file"],
            prefix="transformer",
            adapter_name="parity",
            use_safetensors=True,
        )
        return pipe

    def _transformer(self) -> nn.Module:
        cls = self.diffusers.Step1XEditTransformer2DModel
        folder = self.checkpoint / "transformer"
        config = cls.load_config(str(folder))
        model = cls.from_config(config)
        if getattr(model, "text_token_mapping", None) is not None:
            model.text_token_mapping = nn.Linear(
                config["connector_in_channels"], config["connector_hidden_size"]
            )
        state = load_file(str(folder / "diffusion_pytorch_model.safetensors"))
        model.load_state_dict(state, strict=True)
        return model.float().eval().requires_grad_(False)

    # ------------------------------------------------------------- checks

    def run(self, check: str, inputs: dict[str, torch.Tensor], source: Image.Image) -> Outputs:
        with torch.inference_mode():
            if check == "tokenizer":
                return {}, {"prefix_tokens": self._prefix_tokens()}
            if check == "dit":
                return {"out": self._dit_forward(inputs)}, {}
            if check == "vae_encode":
                dist = self.pipe.vae.encode(inputs["vae/x"]).latent_dist
                return {"moments": torch.cat([dist.mean, dist.logvar], dim=1)}, {}
            if check == "vae_decode":
                return {"pixels": self._decode(inputs["vae/z"])}, {}
            if check == "encoder":
                return self._encode(inputs), {}
        if check in ("edit_latents", "edit_seed"):
            latents = inputs["edit/latents"] if check == "edit_latents" else None
            return self._edit(self.pipe, source, latents), {"noise_draws": self.noise.draws}
        if check == "lora":
            edited = self._edit(self._pipeline_with_lora(), source, inputs["edit/latents"])
            return edited, {"noise_draws": self.noise.draws}
        if check.startswith("reasoning:"):
            return self._reasoning(source, check.split(":", 1)[1])
        raise ValueError(f"diffusers reference has no check {check!r}")

    def _prefix_tokens(self) -> int:
        prefix = self.pipe.QWEN25VL_PREFIX
        messages = [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": prefix},
                    {"type": "image"},
                    {"type": "text", "text": ""},
                ],
            }
        ]
        text = self.pipe.processor.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, add_vision_id=True
        )
        head = text[: text.index(prefix) + len(prefix)]
        return len(self.pipe.processor.tokenizer(head).input_ids)

    def _dit_forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        extra = {}
        if self.is_v12:
            extra = {
                "text_embeddings": inputs["dit/text_embeddings"],
                "text_mask": inputs["dit/text_mask"],
            }
        out: torch.Tensor = self.pipe.transformer(
            hidden_states=inputs["dit/img"],
            encoder_hidden_states=inputs["dit/llm_embedding"],
            prompt_embeds_mask=inputs["dit/mask"],
            timestep=inputs["dit/t"],  # the pipelines pass (1000 t) / 1000
            img_ids=inputs["dit/img_ids"][0],
            txt_ids=inputs["dit/txt_ids"][0],
            return_dict=False,
            **extra,
        )[0]
        return out

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        """As the pipelines decode: un-scale, then the VAE decoder."""
        config = self.pipe.vae.config
        out: torch.Tensor = self.pipe.vae.decode(
            z / config.scaling_factor + config.shift_factor, return_dict=False
        )[0]
        return out

    def _encode(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        working = Image.fromarray(inputs["encoder/working"].numpy())
        prompts = [self.params["prompt"], self.params["negative_prompt"]]
        if not self.is_v12:
            emb, mask = self.pipe._get_qwenvl_embeds(prompts, [working, working], "cpu")
            return {"emb": emb, "mask": mask}
        out: dict[str, torch.Tensor] = {}
        for row, prompt in zip(("positive", "negative"), prompts, strict=True):
            encoded = self.pipe.encode_prompt(ref_image=working, prompt=prompt, device="cpu")
            out[f"{row}.emb"] = encoded.embedding
            out[f"{row}.mask"] = encoded.mask
            out[f"{row}.txt_ids"] = encoded.txt_ids[None]
            out[f"{row}.text_embeds"] = encoded.text_embeds
            out[f"{row}.text_mask"] = encoded.text_masks
        return out

    def _call(
        self, pipe: Any, source: Image.Image, latents: torch.Tensor | None, **extra: Any
    ) -> Any:
        kwargs: dict[str, Any] = {
            "image": source,
            "prompt": self.params["prompt"],
            "negative_prompt": self.params["negative_prompt"],
            "true_cfg_scale": self.params["guidance_scale"],
            "num_inference_steps": self.params["steps"],
            "generator": torch.Generator("cpu").manual_seed(self.params["seed"]),
            **extra,
        }
        if self.is_v12:
            kwargs["size_level"] = self.params["size_level"]
            self.noise.injected = latents  # its __call__ does not pass `latents` on
        elif latents is not None:
            kwargs["latents"] = _pack(latents)
        try:
            return pipe(**kwargs)
        finally:
            self.noise.injected = None

    def _edit(
        self, pipe: Any, source: Image.Image, latents: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        finals: list[torch.Tensor] = []
        decoded: list[torch.Tensor] = []

        def on_step_end(_pipe: Any, _i: int, _t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            finals.append(tensors["latents"].clone())
            return {}

        patches.record_calls(pipe.vae, "decode", decoded, lambda result, *a, **k: result[0].clone())
        extra: dict[str, Any] = {"callback_on_step_end": on_step_end}
        if self.is_v12:
            extra.update(enable_thinking_mode=False, enable_reflection_mode=False)
        output = self._call(pipe, source, latents, **extra)
        return {
            "latents": finals[-1],
            "decoded": decoded[-1],
            "image": torch.from_numpy(np.asarray(output.images[0]).copy()),
        }

    def _reasoning(self, source: Image.Image, name: str) -> Outputs:
        """The v1.2 reflection loop with scripted MLLM replies; records its control flow."""
        scenario = scenario_named(name)
        replies = ScriptedReplies(scenario.all_replies())
        thinker = __import__(
            "diffusers.pipelines.step1x_edit.pipeline_step1x_edit_thinker", fromlist=["_"]
        )
        patches.scripted_mllm(thinker, replies.answer)
        prompts: list[str] = []
        edited: list[Image.Image] = []
        patches.record_calls(
            self.pipe, "check_inputs", prompts, lambda _r, prompt, *a, **k: str(prompt)
        )
        patches.record_calls(self.pipe, "encode_image", edited, lambda _r, image, *a, **k: image)
        try:
            output = self._call(
                self.pipe,
                source,
                None,
                enable_thinking_mode=scenario.thinking,
                enable_reflection_mode=True,
            )
        finally:
            for name_ in ("check_inputs", "encode_image"):
                delattr(self.pipe, name_)  # drop the probes (instance attributes)
        chosen = next(i for i, im in enumerate(output.images) if im is output.final_images[0])
        rounds = [
            {"instruction": prompt, "edits": "source" if image is source else "previous"}
            for prompt, image in zip(prompts, edited, strict=True)
        ]
        images = {
            f"round{i}": torch.from_numpy(np.asarray(im).copy())
            for i, im in enumerate(output.images)
        }
        trace = {"rounds": rounds, "chosen": chosen, "mllm_calls": replies.calls}
        return images, trace
