"""Every change the harness makes to the reference code at run time, in one place.

Runs in the reference process only. Each patch is device or dtype plumbing for a float32 run on
the CPU, an import stub for a GPU-only or training-only package, or a probe that records a
value; none changes what the reference computes beyond that. scripts/parity/README.md lists
them with the reasons.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

# ----------------------------------------------------------------- import stubs (GPU-only deps)


def _stub_module(name: str, **attributes: Any) -> None:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)  # find_spec() needs one
    module.__dict__.update(attributes)
    sys.modules[name] = module


def _gpu_only(name: str) -> Callable[..., Any]:
    def unavailable(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError(f"{name} is GPU-only and stubbed by the parity harness")

    return unavailable


class _LigerRMSNormFunction:
    apply = staticmethod(_gpu_only("liger_kernel LigerRMSNormFunction"))


def stub_gpu_only_imports() -> None:
    """xfuser (multi-GPU sequence parallelism, imported at module level by the official v1.1
    inference.py, attention.py and multigpu.py) and liger_kernel (a Triton kernel imported by
    the official layers.py; its import fails without a GPU). Only the imports are satisfied;
    calling anything in them raises."""
    distributed = {
        name: _gpu_only(f"xfuser {name}")
        for name in (
            "get_world_group",
            "initialize_model_parallel",
            "init_distributed_environment",
            "get_classifier_free_guidance_world_size",
            "get_classifier_free_guidance_rank",
            "get_sequence_parallel_world_size",
            "get_sequence_parallel_rank",
            "get_sp_group",
            "get_cfg_group",
        )
    }
    _stub_module("xfuser")
    _stub_module("xfuser.core")
    _stub_module("xfuser.core.distributed", **distributed)
    _stub_module("xfuser.model_executor")
    _stub_module("xfuser.model_executor.layers")
    _stub_module("xfuser.model_executor.layers.usp", USP=_gpu_only("xfuser USP"))
    _stub_module("liger_kernel")
    _stub_module("liger_kernel.ops")
    _stub_module("liger_kernel.ops.rms_norm", LigerRMSNormFunction=_LigerRMSNormFunction)


class _TrainingOnly:
    """Stands in for a class the official code only uses in training (subclassed or named in
    annotations at import time); making one raises."""

    def __init__(self, *_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError(f"{type(self).__name__} is training-only and stubbed by the harness")


def stub_training_only_imports() -> None:
    """diffusers and cv2, imported at module level by the official `library/lora_module.py`
    (AutoencoderKL, in an annotation) and `library/utils.py` (a training scheduler subclassing
    diffusers' EulerAncestralDiscreteScheduler; cv2 image resizing for training data), are not
    in the reference venv; the `--lora` merge uses neither. Only the imports are satisfied
    (where the package is missing); making any of the classes raises."""
    if importlib.util.find_spec("cv2") is None:
        _stub_module("cv2")
    if importlib.util.find_spec("diffusers") is not None:
        return
    euler = "diffusers.schedulers.scheduling_euler_ancestral_discrete"
    _stub_module(
        euler,
        EulerAncestralDiscreteSchedulerOutput=type(
            "EulerAncestralDiscreteSchedulerOutput", (_TrainingOnly,), {}
        ),
    )
    _stub_module("diffusers.schedulers", scheduling_euler_ancestral_discrete=sys.modules[euler])
    _stub_module(
        "diffusers",
        AutoencoderKL=type("AutoencoderKL", (_TrainingOnly,), {}),
        EulerAncestralDiscreteScheduler=type(
            "EulerAncestralDiscreteScheduler", (_TrainingOnly,), {}
        ),
        schedulers=sys.modules["diffusers.schedulers"],
    )


# ----------------------------------------------------------------- device: CUDA -> CPU


def _cpu_if_cuda(device: Any) -> Any:
    if isinstance(device, str) and device.startswith("cuda"):
        return "cpu"
    if isinstance(device, torch.device) and device.type == "cuda":
        return torch.device("cpu")
    return device


def redirect_cuda_to_cpu() -> None:
    """The references move tensors with `.to("cuda")` and allocate on
    `torch.cuda.current_device()`; both mean the CPU here."""
    original_to = torch.Tensor.to

    def to(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        args = tuple(_cpu_if_cuda(a) for a in args)
        if "device" in kwargs:
            kwargs["device"] = _cpu_if_cuda(kwargs["device"])
        return original_to(self, *args, **kwargs)

    torch.Tensor.to = to  # type: ignore[method-assign,assignment]
    torch.cuda.current_device = lambda: "cpu"  # type: ignore[assignment,return-value]


# ----------------------------------------------------------------- official code: kernels


def _flash_attn_func_by_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dropout_p: float = 0.0,
    causal: bool = False,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """flash_attn_func's contract ([B, S, H, D] in and out) computed by PyTorch's SDPA."""
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        dropout_p=dropout_p,
        is_causal=causal,
        scale=softmax_scale,
    )
    return out.transpose(1, 2)


def attention_without_flash_attn(attention_module: types.ModuleType) -> None:
    """The official DiT always runs mode="flash" (flash-attn, CUDA only); the same attention
    through SDPA, the computation of the module's own mode="torch"."""
    attention_module.flash_attn_func = _flash_attn_func_by_sdpa  # type: ignore[attr-defined]


def rms_norm_without_liger(layers_module: types.ModuleType) -> None:
    """The official RMSNorm calls Liger's Triton kernel ("gemma" casting: all in float32,
    offset 0); the module's own `rms_norm` is the same formula in float32."""
    rms_norm = layers_module.RMSNorm
    rms_norm.rms_norm_fast = staticmethod(rms_norm.rms_norm)


def qwen_without_flash_attention_2(conditioner_module: Any) -> None:
    """The v1.0 conditioner loads Qwen2.5-VL with attn_implementation="flash_attention_2"
    (CUDA only); "sdpa" (what v1.1 loads) computes the same attention on the CPU."""
    original = conditioner_module.Qwen2_5_VLForConditionalGeneration

    class Qwen2_5_VLWithSdpa:
        @staticmethod
        def from_pretrained(path: Any, **kwargs: Any) -> Any:
            if kwargs.get("attn_implementation") == "flash_attention_2":
                kwargs["attn_implementation"] = "sdpa"
            return original.from_pretrained(path, **kwargs)

    conditioner_module.Qwen2_5_VLForConditionalGeneration = Qwen2_5_VLWithSdpa


# ----------------------------------------------------------------- Qwen's image processor


def official_slow_image_processor(conditioner_module: Any) -> None:
    """The official conditioner's `AutoProcessor.from_pretrained` gets `use_fast=False`: the
    transformers versions its requirements pin (4.49.0 for v1.0, 4.51.3 for v1.1) load the
    slow (PIL) Qwen2-VL image processor for the released preprocessor_config.json; this venv's
    4.55 would load the torchvision "fast" one, whose resize gives different pixels."""
    original = conditioner_module.AutoProcessor

    class AutoProcessorAsPinned:
        @staticmethod
        def from_pretrained(path: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("use_fast", False)
            return original.from_pretrained(path, **kwargs)

    conditioner_module.AutoProcessor = AutoProcessorAsPinned


# ----------------------------------------------------------------- noise: the draws, kept as drawn


@dataclass
class Noise:
    """The starting noise a reference draws, or given latents put in its place.

    The references draw the starting noise in bfloat16 (official: `dtype=torch.bfloat16` in
    `generate_image`; diffusers: in the prompt embeddings' dtype, which `_get_qwenvl_embeds`
    makes bfloat16). The draw is kept exactly (same generator, same dtype) and then cast to
    float32 for the float32 run. With `injected` set, that tensor is returned instead.
    """

    injected: torch.Tensor | None = None
    draws: int = 0

    def take(self, shape: tuple[int, ...], draw: Callable[[], torch.Tensor]) -> torch.Tensor:
        self.draws += 1
        if self.injected is None:
            return draw().float()
        if tuple(self.injected.shape) != tuple(shape):
            raise ValueError(f"injected latents {tuple(self.injected.shape)}, drawn {shape}")
        return self.injected.clone()


class _TorchView(types.ModuleType):
    """`torch` as one reference module sees it: the listed names replaced, the rest torch's."""

    def __init__(self, name: str, overrides: dict[str, Any]) -> None:
        super().__init__(name)
        self.__dict__.update(overrides)

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)


def official_inference_float32(inference_module: types.ModuleType, noise: Noise) -> None:
    """In the official inference.py: no CPU bf16 autocast around the DiT (on CUDA the reference
    runs bf16; the comparison is float32), and the bf16 noise draw kept as drawn (see Noise)."""

    @contextlib.contextmanager
    def no_autocast(*_args: Any, **_kwargs: Any) -> Iterator[None]:
        yield

    def randn(*size: Any, **kwargs: Any) -> torch.Tensor:
        shape = tuple(size[0]) if len(size) == 1 and not isinstance(size[0], int) else size
        return noise.take(tuple(int(s) for s in shape), lambda: torch.randn(*size, **kwargs))

    inference_module.torch = _TorchView(  # type: ignore[attr-defined]
        "torch", {"autocast": no_autocast, "randn": randn}
    )


def official_conditioner_float32(conditioner_module: types.ModuleType) -> None:
    """The official conditioner stores the hidden states in `torch.zeros(..., dtype=bfloat16)`
    buffers; float32 buffers here."""

    def zeros(*size: Any, **kwargs: Any) -> torch.Tensor:
        if kwargs.get("dtype") == torch.bfloat16:
            kwargs["dtype"] = torch.float32
        return torch.zeros(*size, **kwargs)

    conditioner_module.torch = _TorchView("torch", {"zeros": zeros})  # type: ignore[attr-defined]


# ----------------------------------------------------------------- diffusers pipelines


def diffusers_embeds_float32(pipeline_class: type) -> None:
    """`_get_qwenvl_embeds(..., dtype=torch.bfloat16)` is the embeddings' default dtype (and so
    the latents' and the VAE input's); float32 here."""
    function = pipeline_class._get_qwenvl_embeds  # type: ignore[attr-defined]
    defaults = list(function.__defaults__)
    defaults[-1] = torch.float32
    function.__defaults__ = tuple(defaults)


def diffusers_noise(pipeline_module: Any, noise: Noise) -> None:
    """The pipeline's starting-noise draw (`randn_tensor` in prepare_latents) made in bfloat16
    as the unpatched pipeline does (see Noise), or replaced by given latents: the v1.2
    `__call__` never passes its `latents` argument on to prepare_latents."""
    original = pipeline_module.randn_tensor

    def randn_tensor(shape: Any, generator: Any = None, device: Any = None, **kwargs: Any) -> Any:
        kwargs["dtype"] = torch.bfloat16
        return noise.take(
            tuple(int(s) for s in shape),
            lambda: original(shape, generator=generator, device=device, **kwargs),
        )

    pipeline_module.randn_tensor = randn_tensor


def scripted_mllm(thinker_module: types.ModuleType, answer: Callable[[str], str]) -> None:
    """The v1.2 thinker's MLLM replies come from the script: `call_model(messages)` returns
    `answer(system prompt)` instead of sampling Qwen2.5-VL."""

    def call_model(
        _self: Any, messages: list[dict[str, Any]], max_tokens: int, *_args: Any, **_kw: Any
    ) -> str:
        system = next((m["content"] for m in messages if m["role"] == "system"), "")
        return answer(str(system)).strip()

    thinker_module.QwenGenerativeAIClient.call_model = call_model


# ----------------------------------------------------------------- probes (record, change nothing)


def record_calls(owner: Any, name: str, sink: list[Any], keep: Callable[..., Any]) -> None:
    """Wrap `owner.name` so that `keep(result, *args, **kwargs)` is appended to `sink`."""
    original = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        sink.append(keep(result, *args, **kwargs))
        return result

    setattr(owner, name, wrapper)
