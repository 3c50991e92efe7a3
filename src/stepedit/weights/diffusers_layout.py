"""The diffusers checkpoint layout: key tables for the DiT and the VAE, and config.json mapping.

Our modules use the original release's key names, so the diffusers layout is reached through an
explicit table of `KeyMap`s built from the model config. The same table serves both
directions. Conversion is lazy (a `MappedSource`), strict (every source key must be claimed by
exactly one entry; leftovers and absentees are errors naming the keys) and checks shapes before
any tensor is read.

What differs between the layouts, besides names:
- double blocks: the original fused `qkv` Linear is three diffusers Linears (`to_q/to_k/to_v`,
  `add_q_proj/...` for the text stream), split along the output dimension;
- single blocks: the original `linear1` is `to_q`, `to_k`, `to_v` and `proj_mlp` stacked;
- final layer: the original AdaLN projection yields (shift, scale), diffusers' yields
  (scale, shift), so the two halves of its weight and bias are swapped;
- VAE mid-block attention: 1x1 convolutions in the original, Linears in diffusers
  (a trailing `(1, 1)` in the weight shape); decoder up-blocks are numbered in reverse.
- v1.0's `connector.scale_factor` has no place in the diffusers connector. It multiplies the
  pooled text features before `global_proj_out`, so it can be folded into that Linear's weight
  (W' = W * (1 + s)); this is done only when asked (`fold_scale_factor=True`), because it changes
  the stored weights (one extra rounding in the checkpoint dtype). The config then records
  `_stepedit_model_version: "v1.0"`, and converting back writes `scale_factor = 0` (a factor of 1)
  so the original-layout file is again recognised as v1.0 and computes the same function.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch

from stepedit.errors import WeightsError
from stepedit.model.presets import AutoEncoderConfig, DiTConfig
from stepedit.weights.formats import VERSION_CONFIG_KEY, ModelVersion, check_version
from stepedit.weights.tensors import MappedSource, Shape, TensorSource, key_problems

Kind = Literal["rename", "concat", "swap_halves", "conv1x1"]


@dataclass(frozen=True)
class KeyMap:
    """One original key and the diffusers key(s) holding the same numbers.

    concat: the original tensor is the diffusers tensors stacked along dim 0 (sizes given).
    swap_halves: the two halves along dim 0 are exchanged.
    conv1x1: original [out, in, 1, 1] <-> diffusers [out, in].
    """

    original: str
    diffusers: tuple[str, ...]
    kind: Kind = "rename"
    sizes: tuple[int, ...] = ()


def _rename(original: str, diffusers: str) -> KeyMap:
    return KeyMap(original, (diffusers,))


def _linear(original: str, diffusers: str, *, bias: bool = True) -> list[KeyMap]:
    maps = [_rename(f"{original}.weight", f"{diffusers}.weight")]
    if bias:
        maps.append(_rename(f"{original}.bias", f"{diffusers}.bias"))
    return maps


def _split(original: str, diffusers: Iterable[str], sizes: tuple[int, ...]) -> list[KeyMap]:
    parts = tuple(diffusers)
    return [
        KeyMap(f"{original}.weight", tuple(f"{p}.weight" for p in parts), "concat", sizes),
        KeyMap(f"{original}.bias", tuple(f"{p}.bias" for p in parts), "concat", sizes),
    ]


# --- DiT -----------------------------------------------------------------------------------------


def _connector_keys(config: DiTConfig) -> list[str]:
    """Connector modules, named alike in both layouts (a token refiner plus a pooled projection)."""
    refiner = "connector.S"
    names = [
        f"{refiner}.input_embedder",
        f"{refiner}.t_embedder.mlp.0",
        f"{refiner}.t_embedder.mlp.2",
        f"{refiner}.c_embedder.linear_1",
        f"{refiner}.c_embedder.linear_2",
    ]
    for i in range(config.connector_depth):
        block = f"{refiner}.individual_token_refiner.blocks.{i}"
        names += [
            f"{block}.norm1",
            f"{block}.self_attn_qkv",
            f"{block}.self_attn_proj",
            f"{block}.norm2",
            f"{block}.mlp.fc1",
            f"{block}.mlp.fc2",
            f"{block}.adaLN_modulation.1",
        ]
    names.append("connector.global_proj_out")
    return [f"{name}.{param}" for name in names for param in ("weight", "bias")]


def dit_key_maps(config: DiTConfig) -> list[KeyMap]:
    """The full DiT table for `config` (v1.0's scale_factor is handled outside the table)."""
    hidden = config.hidden_size
    mlp_hidden = int(hidden * config.mlp_ratio)
    maps: list[KeyMap] = []
    maps += _linear("img_in", "x_embedder")
    maps += _linear("txt_in", "context_embedder")
    maps += _linear("time_in.in_layer", "time_embed.in_layer")
    maps += _linear("time_in.out_layer", "time_embed.out_layer")
    maps += _linear("vector_in.in_layer", "vec_embed.in_layer")
    maps += _linear("vector_in.out_layer", "vec_embed.out_layer")
    maps += [_rename(key, key) for key in _connector_keys(config)]

    for i in range(config.depth):
        src, dst = f"double_blocks.{i}", f"transformer_blocks.{i}"
        maps += _linear(f"{src}.img_mod.lin", f"{dst}.norm1.linear")
        maps += _linear(f"{src}.txt_mod.lin", f"{dst}.norm1_context.linear")
        img_qkv = (f"{dst}.attn.to_q", f"{dst}.attn.to_k", f"{dst}.attn.to_v")
        txt_qkv = (f"{dst}.attn.add_q_proj", f"{dst}.attn.add_k_proj", f"{dst}.attn.add_v_proj")
        maps += _split(f"{src}.img_attn.qkv", img_qkv, (hidden,) * 3)
        maps += _split(f"{src}.txt_attn.qkv", txt_qkv, (hidden,) * 3)
        maps += [
            _rename(f"{src}.img_attn.norm.query_norm.scale", f"{dst}.attn.norm_q.weight"),
            _rename(f"{src}.img_attn.norm.key_norm.scale", f"{dst}.attn.norm_k.weight"),
            _rename(f"{src}.txt_attn.norm.query_norm.scale", f"{dst}.attn.norm_added_q.weight"),
            _rename(f"{src}.txt_attn.norm.key_norm.scale", f"{dst}.attn.norm_added_k.weight"),
        ]
        maps += _linear(f"{src}.img_attn.proj", f"{dst}.attn.to_out.0")
        maps += _linear(f"{src}.txt_attn.proj", f"{dst}.attn.to_add_out")
        maps += _linear(f"{src}.img_mlp.0", f"{dst}.ff.net.0.proj")
        maps += _linear(f"{src}.img_mlp.2", f"{dst}.ff.net.2")
        maps += _linear(f"{src}.txt_mlp.0", f"{dst}.ff_context.net.0.proj")
        maps += _linear(f"{src}.txt_mlp.2", f"{dst}.ff_context.net.2")

    for i in range(config.depth_single_blocks):
        src, dst = f"single_blocks.{i}", f"single_transformer_blocks.{i}"
        maps += _linear(f"{src}.modulation.lin", f"{dst}.norm.linear")
        parts = (f"{dst}.attn.to_q", f"{dst}.attn.to_k", f"{dst}.attn.to_v", f"{dst}.proj_mlp")
        maps += _split(f"{src}.linear1", parts, (hidden, hidden, hidden, mlp_hidden))
        maps += [
            _rename(f"{src}.norm.query_norm.scale", f"{dst}.attn.norm_q.weight"),
            _rename(f"{src}.norm.key_norm.scale", f"{dst}.attn.norm_k.weight"),
        ]
        maps += _linear(f"{src}.linear2", f"{dst}.proj_out")

    maps += _linear("final_layer.linear", "proj_out")
    maps += [
        KeyMap("final_layer.adaLN_modulation.1.weight", ("norm_out.linear.weight",), "swap_halves"),
        KeyMap("final_layer.adaLN_modulation.1.bias", ("norm_out.linear.bias",), "swap_halves"),
    ]
    if config.version == "v1.2":
        maps += _linear("text_token_mapping", "text_token_mapping")
    return maps


# --- VAE -----------------------------------------------------------------------------------------


def _resnet(src: str, dst: str, *, has_shortcut: bool) -> list[KeyMap]:
    maps: list[KeyMap] = []
    for n in (1, 2):
        maps += _linear(f"{src}.norm{n}", f"{dst}.norm{n}")
        maps += _linear(f"{src}.conv{n}", f"{dst}.conv{n}")
    if has_shortcut:
        maps += _linear(f"{src}.nin_shortcut", f"{dst}.conv_shortcut")
    return maps


def _mid(part: str) -> list[KeyMap]:
    src, dst = f"{part}.mid", f"{part}.mid_block"
    maps = _resnet(f"{src}.block_1", f"{dst}.resnets.0", has_shortcut=False)
    maps += _linear(f"{src}.attn_1.norm", f"{dst}.attentions.0.group_norm")
    for original, diffusers in (
        ("q", "to_q"),
        ("k", "to_k"),
        ("v", "to_v"),
        ("proj_out", "to_out.0"),
    ):
        a, b = f"{src}.attn_1.{original}", f"{dst}.attentions.0.{diffusers}"
        maps += [
            KeyMap(f"{a}.weight", (f"{b}.weight",), "conv1x1"),
            _rename(f"{a}.bias", f"{b}.bias"),
        ]
    maps += _resnet(f"{src}.block_2", f"{dst}.resnets.1", has_shortcut=False)
    return maps


def vae_key_maps(config: AutoEncoderConfig) -> list[KeyMap]:
    """The FLUX AutoEncoder <-> diffusers AutoencoderKL table (no quant convs in FLUX's VAE)."""
    levels = len(config.ch_mult)
    widths = [config.ch * m for m in config.ch_mult]
    maps: list[KeyMap] = []

    maps += _linear("encoder.conv_in", "encoder.conv_in")
    block_in = config.ch
    for i in range(levels):
        for j in range(config.num_res_blocks):
            src, dst = f"encoder.down.{i}.block.{j}", f"encoder.down_blocks.{i}.resnets.{j}"
            maps += _resnet(src, dst, has_shortcut=block_in != widths[i])
            block_in = widths[i]
        if i != levels - 1:
            maps += _linear(
                f"encoder.down.{i}.downsample.conv", f"encoder.down_blocks.{i}.downsamplers.0.conv"
            )
    maps += _mid("encoder")
    maps += _linear("encoder.norm_out", "encoder.conv_norm_out")
    maps += _linear("encoder.conv_out", "encoder.conv_out")

    maps += _linear("decoder.conv_in", "decoder.conv_in")
    maps += _mid("decoder")
    block_in = widths[-1]
    for i in reversed(range(levels)):
        up = levels - 1 - i  # diffusers numbers up-blocks from the lowest resolution
        for j in range(config.num_res_blocks + 1):
            src, dst = f"decoder.up.{i}.block.{j}", f"decoder.up_blocks.{up}.resnets.{j}"
            maps += _resnet(src, dst, has_shortcut=block_in != widths[i])
            block_in = widths[i]
        if i != 0:
            maps += _linear(
                f"decoder.up.{i}.upsample.conv", f"decoder.up_blocks.{up}.upsamplers.0.conv"
            )
    maps += _linear("decoder.norm_out", "decoder.conv_norm_out")
    maps += _linear("decoder.conv_out", "decoder.conv_out")
    return maps


# --- applying a table ----------------------------------------------------------------------------


def _diffusers_shapes(entry: KeyMap, shape: Shape) -> list[Shape]:
    if entry.kind == "concat":
        if not shape or sum(entry.sizes) != shape[0]:
            raise WeightsError(
                f"{entry.original!r} has shape {shape}; its dim 0 should split into {entry.sizes}"
            )
        return [(size, *shape[1:]) for size in entry.sizes]
    if entry.kind == "conv1x1":
        if len(shape) != 4 or shape[2:] != (1, 1):
            raise WeightsError(f"{entry.original!r} has shape {shape}, expected [out, in, 1, 1]")
        return [shape[:2]]
    if entry.kind == "swap_halves" and (not shape or shape[0] % 2):
        raise WeightsError(f"{entry.original!r} has shape {shape}; dim 0 must be even")
    return [shape]


def _original_shape(entry: KeyMap, shapes: list[Shape]) -> Shape:
    if entry.kind == "concat":
        got = tuple(s[0] if s else -1 for s in shapes)
        if got != entry.sizes or len({s[1:] for s in shapes}) != 1:
            raise WeightsError(
                f"{list(entry.diffusers)} have shapes {shapes}; expected dim-0 sizes {entry.sizes} "
                "and equal trailing dims"
            )
        return (sum(entry.sizes), *shapes[0][1:])
    if entry.kind == "conv1x1":
        if len(shapes[0]) != 2:
            raise WeightsError(f"{entry.diffusers[0]!r} has shape {shapes[0]}, expected [out, in]")
        return (*shapes[0], 1, 1)
    return _diffusers_shapes(entry, shapes[0])[0]


def _swap_halves(tensor: torch.Tensor) -> torch.Tensor:
    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def _check_claims(source: TensorSource, wanted: list[str], what: str, layout: str) -> None:
    present = set(source.names())
    missing = [k for k in wanted if k not in present]
    leftover = present - set(wanted)
    problems = key_problems(sorted(missing), sorted(leftover))
    if problems:
        raise WeightsError(
            f"{what} ({layout} layout) does not match the model: " + "; ".join(problems)
        )
    if len(wanted) != len(set(wanted)):
        raise WeightsError(f"internal error: the {what} key table claims a key twice")


def to_diffusers(source: TensorSource, maps: list[KeyMap], what: str) -> MappedSource:
    """View original-layout tensors under diffusers names (lazy; shapes checked up front)."""
    _check_claims(source, [m.original for m in maps], what, "original")
    shapes: dict[str, Shape] = {}
    dtypes: dict[str, torch.dtype] = {}
    owner: dict[str, tuple[KeyMap, int]] = {}
    for entry in maps:
        for index, (key, shape) in enumerate(
            zip(
                entry.diffusers, _diffusers_shapes(entry, source.shape(entry.original)), strict=True
            )
        ):
            shapes[key], dtypes[key], owner[key] = (
                shape,
                source.dtype(entry.original),
                (entry, index),
            )
    # A split reads its source once for all its parts: keep only the last source tensor.
    cache: dict[str, list[torch.Tensor]] = {}

    def produce(key: str) -> torch.Tensor:
        entry, index = owner[key]
        if entry.original not in cache:
            cache.clear()
            tensor = source.get(entry.original)
            if entry.kind == "concat":
                parts = list(torch.split(tensor, list(entry.sizes), dim=0))
            elif entry.kind == "swap_halves":
                parts = [_swap_halves(tensor)]
            elif entry.kind == "conv1x1":
                parts = [tensor.reshape(tensor.shape[:2])]
            else:
                parts = [tensor]
            cache[entry.original] = parts
        return cache[entry.original][index].contiguous()

    return MappedSource(shapes, dtypes, produce)


def to_original(source: TensorSource, maps: list[KeyMap], what: str) -> MappedSource:
    """View diffusers-layout tensors under original names (lazy; shapes checked up front)."""
    _check_claims(source, [k for m in maps for k in m.diffusers], what, "diffusers")
    by_key = {entry.original: entry for entry in maps}
    shapes = {
        entry.original: _original_shape(entry, [source.shape(k) for k in entry.diffusers])
        for entry in maps
    }
    dtypes = {entry.original: source.dtype(entry.diffusers[0]) for entry in maps}

    def produce(key: str) -> torch.Tensor:
        entry = by_key[key]
        tensors = [source.get(k) for k in entry.diffusers]
        if entry.kind == "concat":
            return torch.cat(tensors, dim=0)
        if entry.kind == "swap_halves":
            return _swap_halves(tensors[0])
        if entry.kind == "conv1x1":
            return tensors[0].reshape(*tensors[0].shape, 1, 1)
        return tensors[0]

    return MappedSource(shapes, dtypes, produce)


# --- the DiT's version-specific parts ------------------------------------------------------------

SCALE_FACTOR_KEY = "connector.scale_factor"
GLOBAL_PROJ_WEIGHT = "connector.global_proj_out.weight"


def dit_to_diffusers(
    source: TensorSource, config: DiTConfig, *, fold_scale_factor: bool = False
) -> MappedSource:
    """The DiT under diffusers names. v1.0 needs `fold_scale_factor=True` (see module docstring)."""
    maps = dit_key_maps(config)
    if config.version != "v1.0":
        return to_diffusers(source, maps, "DiT")
    if not fold_scale_factor:
        raise WeightsError(
            "a v1.0 DiT has connector.scale_factor, which the diffusers layout has no place for; "
            "fold it into connector.global_proj_out.weight (fold_scale_factor=True, "
            "`stepedit convert --fold-v1.0-scale`) to convert it anyway"
        )
    return to_diffusers(_FoldedScaleSource(source), maps, "DiT")


class _FoldedScaleSource:
    """A v1.0 source seen without scale_factor, its global_proj_out weight multiplied by it."""

    def __init__(self, source: TensorSource) -> None:
        if SCALE_FACTOR_KEY not in source.names():
            raise WeightsError(f"a v1.0 DiT must hold {SCALE_FACTOR_KEY!r}; this one does not")
        self._source = source

    def names(self) -> list[str]:
        return [k for k in self._source.names() if k != SCALE_FACTOR_KEY]

    def shape(self, key: str) -> Shape:
        return self._source.shape(key)

    def dtype(self, key: str) -> torch.dtype:
        return self._source.dtype(key)

    def get(self, key: str) -> torch.Tensor:
        tensor = self._source.get(key)
        if key != GLOBAL_PROJ_WEIGHT:
            return tensor
        scale = self._source.get(SCALE_FACTOR_KEY).float()
        return (tensor.float() * (1 + scale)).to(tensor.dtype)


def dit_to_original(source: TensorSource, config: DiTConfig) -> TensorSource:
    """The DiT under original names; for v1.0 adds scale_factor = 0 (the fold already applied)."""
    converted = to_original(source, dit_key_maps(config), "DiT")
    if config.version != "v1.0":
        return converted
    shapes = {k: converted.shape(k) for k in converted.names()}
    dtypes = {k: converted.dtype(k) for k in converted.names()}
    scale_dtype = dtypes[GLOBAL_PROJ_WEIGHT]
    shapes[SCALE_FACTOR_KEY], dtypes[SCALE_FACTOR_KEY] = (1,), scale_dtype

    def produce(key: str) -> torch.Tensor:
        if key == SCALE_FACTOR_KEY:
            return torch.zeros(1, dtype=scale_dtype)
        return converted.get(key)

    return MappedSource(shapes, dtypes, produce)


# --- config.json ---------------------------------------------------------------------------------


def dit_config_to_diffusers(
    config: DiTConfig, *, folded_scale_factor: bool = False
) -> dict[str, Any]:
    head_dim = config.hidden_size // config.num_heads
    if config.mlp_ratio != 4.0 or config.theta != 10_000 or not config.qkv_bias:
        raise WeightsError(
            "the diffusers Step1X-Edit transformer fixes mlp_ratio=4, theta=10000 and qkv biases; "
            f"this config has mlp_ratio={config.mlp_ratio}, theta={config.theta}, "
            f"qkv_bias={config.qkv_bias}"
        )
    data: dict[str, Any] = {
        "_class_name": "Step1XEditTransformer2DModel",
        "patch_size": 1,
        "in_channels": config.in_channels,
        "out_channels": config.out_channels,
        "num_layers": config.depth,
        "num_single_layers": config.depth_single_blocks,
        "attention_head_dim": head_dim,
        "num_attention_heads": config.num_heads,
        "joint_attention_dim": config.context_in_dim,
        "timestep_in_dim": 256,
        "vector_in_dim": config.vec_in_dim,
        "connector_in_channels": config.connector_in_channels,
        "connector_hidden_size": config.connector_hidden_size,
        "connector_heads_num": config.connector_heads,
        "connector_depth": config.connector_depth,
        "guidance_embeds": False,
        "axes_dims_rope": list(config.axes_dim),
        "enable_text_token_mapping": config.version == "v1.2",
    }
    if config.version == "v1.0":
        data[VERSION_CONFIG_KEY] = "v1.0"
        data["_stepedit_folded_scale_factor"] = folded_scale_factor
    return data


def dit_config_from_diffusers(data: dict[str, Any], version: ModelVersion) -> DiTConfig:
    check_version(version)
    if data.get("patch_size", 1) != 1 or data.get("guidance_embeds", False):
        raise WeightsError(
            "transformer/config.json has patch_size != 1 or guidance_embeds; "
            "Step1X-Edit uses neither"
        )
    if data.get("timestep_in_dim", 256) != 256:
        raise WeightsError("transformer/config.json: timestep_in_dim must be 256")
    try:
        heads = int(data["num_attention_heads"])
        in_channels = int(data["in_channels"])
        return DiTConfig(
            in_channels=in_channels,
            out_channels=int(data.get("out_channels") or in_channels),
            vec_in_dim=int(data.get("vector_in_dim", 768)),
            context_in_dim=int(data["joint_attention_dim"]),
            hidden_size=heads * int(data["attention_head_dim"]),
            mlp_ratio=4.0,
            num_heads=heads,
            depth=int(data["num_layers"]),
            depth_single_blocks=int(data["num_single_layers"]),
            axes_dim=tuple(int(a) for a in data["axes_dims_rope"]),
            theta=10_000,
            qkv_bias=True,
            connector_in_channels=int(data["connector_in_channels"]),
            connector_hidden_size=int(data["connector_hidden_size"]),
            connector_heads=int(data["connector_heads_num"]),
            connector_depth=int(data["connector_depth"]),
            version=version,
        )
    except KeyError as exc:
        raise WeightsError(f"transformer/config.json lacks {exc.args[0]!r}") from exc


def vae_config_to_diffusers(config: AutoEncoderConfig) -> dict[str, Any]:
    levels = len(config.ch_mult)
    return {
        "_class_name": "AutoencoderKL",
        "in_channels": config.in_channels,
        "out_channels": config.out_ch,
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": [config.ch * m for m in config.ch_mult],
        "layers_per_block": config.num_res_blocks,
        "act_fn": "silu",
        "latent_channels": config.z_channels,
        "norm_num_groups": 32,
        "sample_size": 1024,
        "scaling_factor": config.scale_factor,
        "shift_factor": config.shift_factor,
        "latents_mean": None,
        "latents_std": None,
        "force_upcast": True,
        "use_quant_conv": False,
        "use_post_quant_conv": False,
        "mid_block_add_attention": True,
    }


def vae_config_from_diffusers(data: dict[str, Any]) -> AutoEncoderConfig:
    widths = [int(w) for w in data.get("block_out_channels", [])]
    if not widths or any(w % widths[0] for w in widths):
        raise WeightsError(
            f"vae/config.json: block_out_channels {widths} are not multiples of the first"
        )
    unsupported = {
        k: data.get(k)
        for k in ("use_quant_conv", "use_post_quant_conv")
        if data.get(k, True)  # diffusers' default is True; FLUX's VAE has none
    }
    if (
        unsupported
        or data.get("norm_num_groups", 32) != 32
        or not data.get("mid_block_add_attention", True)
    ):
        raise WeightsError(
            "vae/config.json is not a FLUX-style VAE (needs use_quant_conv=false, "
            "use_post_quant_conv=false, norm_num_groups=32, mid-block attention)"
        )
    return AutoEncoderConfig(
        in_channels=int(data.get("in_channels", 3)),
        ch=widths[0],
        out_ch=int(data.get("out_channels", 3)),
        ch_mult=tuple(w // widths[0] for w in widths),
        num_res_blocks=int(data.get("layers_per_block", 2)),
        z_channels=int(data.get("latent_channels", 16)),
        scale_factor=float(data.get("scaling_factor", 0.3611)),
        shift_factor=float(data.get("shift_factor") or 0.0),
    )


# FLUX.1's scheduler settings, which Step1X-Edit's diffusers pipelines use.
SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 4096,
    "max_shift": 1.15,
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
}


def model_index(version: ModelVersion, *, has_processor: bool = True) -> dict[str, Any]:
    pipeline = "Step1XEditPipelineV1P2" if version == "v1.2" else "Step1XEditPipeline"
    index: dict[str, Any] = {
        "_class_name": pipeline,
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "Qwen2_5_VLForConditionalGeneration"],
        "transformer": ["diffusers", "Step1XEditTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    if has_processor:
        index["processor"] = ["transformers", "Qwen2_5_VLProcessor"]
    return index
