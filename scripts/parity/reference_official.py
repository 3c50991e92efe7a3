"""The official stepfun-ai/Step1X-Edit code (v1.0 or v1.1) run on the harness's tiny checkpoint.

Runs in the reference venv, imported from the checkout given on the command line. `load_models`
hard-codes the full-size hyper-parameters, so the modules are built here with the tiny ones
(`Step1XEdit(Step1XParams(...))`, `AutoEncoder(...)`, on the meta device as `load_models` does)
and the checkpoint's state dicts are loaded into them strictly. `ImageGenerator` is created
without its `__init__` (which would call `load_models` and cast the DiT to bf16) and given
those modules; everything it then runs is the reference's own code.
"""

from __future__ import annotations

import dataclasses
import inspect
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

Outputs = tuple[dict[str, torch.Tensor], dict[str, Any]]


def _import_official(root: Path) -> dict[str, ModuleType]:
    sys.path.insert(0, str(root))
    patches.stub_gpu_only_imports()
    patches.redirect_cuda_to_cpu()
    import inference
    import modules.attention
    import modules.autoencoder
    import modules.conditioner
    import modules.connector_edit
    import modules.layers
    import modules.model_edit

    return {
        "inference": inference,
        "attention": modules.attention,
        "autoencoder": modules.autoencoder,
        "conditioner": modules.conditioner,
        "connector": modules.connector_edit,
        "layers": modules.layers,
        "model": modules.model_edit,
    }


def _no_meta_left(module: nn.Module, what: str) -> None:
    left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"{what}: not loaded from the checkpoint: {left[:5]}")


class Official:
    def __init__(self, job: Job) -> None:
        self.job = job
        self.params = job.params
        self.checkpoint = Path(job.checkpoint)
        self.mods = _import_official(Path(job.ref_dir))
        patches.attention_without_flash_attn(self.mods["attention"])
        patches.rms_norm_without_liger(self.mods["layers"])
        patches.official_conditioner_float32(self.mods["conditioner"])
        patches.qwen_without_flash_attention_2(self.mods["conditioner"])
        patches.official_slow_image_processor(self.mods["conditioner"])
        self.noise = patches.Noise()
        patches.official_inference_float32(self.mods["inference"], self.noise)
        self._dit: nn.Module | None = None
        self._ae: nn.Module | None = None
        self._encoder: Any = None

    # ------------------------------------------------------------- modules

    @property
    def dit(self) -> nn.Module:
        if self._dit is None:
            self._dit = self._build_dit()
        return self._dit

    @property
    def ae(self) -> nn.Module:
        if self._ae is None:
            self._ae = self._build_ae()
        return self._ae

    @property
    def encoder(self) -> Any:
        if self._encoder is None:
            embedder = self.mods["conditioner"].Qwen25VL_7b_Embedder
            qwen = self.checkpoint / self.params["qwen_folder"]
            self._encoder = embedder(str(qwen), max_length=640, dtype=torch.float32, device="cpu")
        return self._encoder

    def _build_dit(self) -> nn.Module:
        hp = self.params["dit"]
        model = self.mods["model"]
        fields = {f.name for f in dataclasses.fields(model.Step1XParams)}
        kwargs = {k: hp[k] for k in fields if k in hp}
        kwargs["axes_dim"] = list(hp["axes_dim"])
        if "mode" in fields:  # v1.1: the release runs mode="flash" (see reference_patches)
            kwargs.update(mode="flash", version=self.job.version)
        connector_kwargs: dict[str, Any] = {
            "in_channels": hp["connector_in_channels"],
            "hidden_size": hp["connector_hidden_size"],
            "heads_num": hp["connector_heads"],
            "depth": hp["connector_depth"],
            "dtype": torch.float32,
        }
        connector = self.mods["connector"].Qwen2Connector
        if "version" in inspect.signature(connector).parameters:
            connector_kwargs["version"] = self.job.version
        with torch.device("meta"):
            dit = model.Step1XEdit(model.Step1XParams(**kwargs))
            # Step1XEdit builds the full-size connector (3584 -> 4096); the tiny one instead.
            dit.connector = connector(**connector_kwargs)
        state = load_file(str(self.checkpoint / self.params["dit_file"]))
        dit.load_state_dict(state, strict=True, assign=True)
        _no_meta_left(dit, "DiT")
        return dit.float().eval().requires_grad_(False)

    def _build_ae(self) -> nn.Module:
        hp = self.params["ae"]
        with torch.device("meta"):
            ae = self.mods["autoencoder"].AutoEncoder(
                resolution=hp["resolution"],
                in_channels=hp["in_channels"],
                ch=hp["ch"],
                out_ch=hp["out_ch"],
                ch_mult=list(hp["ch_mult"]),
                num_res_blocks=hp["num_res_blocks"],
                z_channels=hp["z_channels"],
                scale_factor=hp["scale_factor"],
                shift_factor=hp["shift_factor"],
            )
        state = load_file(str(self.checkpoint / self.params["vae_file"]))
        ae.load_state_dict(state, strict=True, assign=True)
        _no_meta_left(ae, "VAE")
        return ae.float().eval().requires_grad_(False)

    def _dit_with_lora(self) -> nn.Module:
        """A fresh tiny DiT with the job's LoRA merged by the official `--lora` path:
        `ImageGenerator.__init__` calls `equip_dit_with_lora_sd_scripts` (sd-scripts' network
        built from the file's weights, merged into the Linears at multiplier 1.0)."""
        patches.stub_training_only_imports()
        dit = self._build_dit()
        self.mods["inference"].equip_dit_with_lora_sd_scripts(
            self.ae, [self.encoder], dit, self.params["lora_file"], device=torch.device("cpu")
        )
        return dit

    def _generator(self, dit: nn.Module) -> Any:
        """An ImageGenerator holding the tiny modules (its __init__ would build full-size)."""
        inference = self.mods["inference"]
        gen = object.__new__(inference.ImageGenerator)
        gen.device = torch.device("cpu")
        gen.version = self.job.version
        gen.ae, gen.dit, gen.llm_encoder = self.ae, dit, self.encoder
        gen.offload, gen.quantized, gen.lora_module, gen.mode = False, False, None, "flash"
        return gen

    # ------------------------------------------------------------- checks

    def run(self, check: str, inputs: dict[str, torch.Tensor], source: Image.Image) -> Outputs:
        with torch.inference_mode():
            if check == "tokenizer":
                return {}, {"prefix_tokens": self._prefix_tokens()}
            if check == "dit":
                return {"out": self._dit_forward(inputs)}, {}
            ae: Any = self.ae
            if check == "vae_encode":
                return {"moments": ae.encoder(inputs["vae/x"])}, {}
            if check == "vae_decode":
                return {"pixels": ae.decode(inputs["vae/z"])}, {}
            if check == "encoder":
                return self._encode(inputs), {}
        if check in ("edit_latents", "edit_seed"):
            latents = inputs["edit/latents"] if check == "edit_latents" else None
            return self._edit(self.dit, source, latents), {"noise_draws": self.noise.draws}
        if check == "lora":
            edited = self._edit(self._dit_with_lora(), source, inputs["edit/latents"])
            return edited, {"noise_draws": self.noise.draws}
        raise ValueError(f"official reference has no check {check!r}")

    def _prefix_tokens(self) -> int:
        """Tokens of the reference's own template rendering up to the end of its prefix."""
        encoder = self.encoder
        messages = [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": encoder.prefix},
                    {"type": "image"},
                    {"type": "text", "text": ""},
                ],
            }
        ]
        text = encoder.processor.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, add_vision_id=True
        )
        head = text[: text.index(encoder.prefix) + len(encoder.prefix)]
        return len(encoder.processor.tokenizer(head).input_ids)

    def _dit_forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        out: torch.Tensor = self.dit(
            img=inputs["dit/img"],
            img_ids=inputs["dit/img_ids"],
            txt_ids=inputs["dit/txt_ids"],
            timesteps=inputs["dit/t"],
            llm_embedding=inputs["dit/llm_embedding"],
            t_vec=inputs["dit/t"],
            mask=inputs["dit/mask"],
        )
        return out

    def _encode(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        working = inputs["encoder/working"].permute(2, 0, 1).float().div(255)[None]
        emb, mask = self.encoder(
            [self.params["prompt"], self.params["negative_prompt"]], torch.cat([working, working])
        )
        return {"emb": emb, "mask": mask}

    def _edit(
        self, dit: nn.Module, source: Image.Image, latents: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        gen = self._generator(dit)
        finals: list[torch.Tensor] = []
        decoded: list[torch.Tensor] = []
        patches.record_calls(gen, "denoise", finals, lambda result, *a, **k: result.clone())
        patches.record_calls(gen.ae, "decode", decoded, lambda result, *a, **k: result.clone())
        self.noise.injected = latents
        # The official code samples the VAE posterior with the global RNG, which its main()
        # never seeds; a run seeded as `torch.manual_seed(seed)` is the reproducible one.
        torch.manual_seed(self.params["seed"])
        images = gen.generate_image(
            self.params["prompt"],
            self.params["negative_prompt"],
            ref_images=source,
            num_steps=self.params["steps"],
            cfg_guidance=self.params["guidance_scale"],
            seed=self.params["seed"],
            size_level=self.params["size_level"],
        )
        self.noise.injected = None
        return {
            "latents": finals[-1],
            "decoded": decoded[-1],
            "image": torch.from_numpy(np.asarray(images[0]).copy()),
        }
