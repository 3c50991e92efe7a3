"""Hyper-parameters of the Step1X-Edit DiT and the FLUX autoencoder, with named presets.

The full-size numbers are those of the released checkpoints. The `tiny-*` presets keep every
structural rule of the full model (head_dim == sum(axes_dim), 8x latent downsampling, GroupNorm
with 32 groups) at a size that runs in milliseconds on a CPU, for tests and `dummy:` sources.
"""

from __future__ import annotations

from dataclasses import dataclass

from stepedit.request import ModelVersion

# Hidden size of the tiny Qwen2.5-VL used with the tiny presets (the real 7B model has 3584).
TINY_QWEN_HIDDEN = 64


@dataclass(frozen=True)
class DiTConfig:
    in_channels: int = 64  # 16 latent channels x a 2x2 patch
    out_channels: int = 64
    vec_in_dim: int = 768  # width of the connector's pooled output (global_proj_out)
    context_in_dim: int = 4096  # must equal connector_hidden_size: txt_in reads the refiner output
    hidden_size: int = 3072
    mlp_ratio: float = 4.0
    num_heads: int = 24
    depth: int = 19
    depth_single_blocks: int = 38
    axes_dim: tuple[int, ...] = (16, 56, 56)  # RoPE split of head_dim over (index, y, x)
    theta: int = 10_000
    qkv_bias: bool = True
    connector_in_channels: int = 3584  # Qwen2.5-VL-7B hidden size
    connector_hidden_size: int = 4096
    connector_heads: int = 32
    connector_depth: int = 2
    # v1.0 has connector.scale_factor; v1.2 has text_token_mapping; v1.1 has neither.
    version: ModelVersion = "v1.1"

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads != 0:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        if sum(self.axes_dim) != self.head_dim:
            raise ValueError(f"axes_dim {self.axes_dim} must sum to head_dim {self.head_dim}")
        if any(d % 2 for d in self.axes_dim):
            raise ValueError(f"every entry of axes_dim must be even, got {self.axes_dim}")
        if self.connector_hidden_size != self.context_in_dim:
            raise ValueError(
                f"connector_hidden_size {self.connector_hidden_size} must equal "
                f"context_in_dim {self.context_in_dim}"
            )
        if self.connector_hidden_size % self.connector_heads != 0:
            raise ValueError(
                f"connector_hidden_size {self.connector_hidden_size} is not divisible by "
                f"connector_heads {self.connector_heads}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def has_scale_factor(self) -> bool:
        return self.version == "v1.0"

    @property
    def has_text_token_mapping(self) -> bool:
        return self.version == "v1.2"


@dataclass(frozen=True)
class AutoEncoderConfig:
    resolution: int = 256
    in_channels: int = 3
    ch: int = 128
    out_ch: int = 3
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)  # len(ch_mult) - 1 downsamples: 3 -> factor 8
    num_res_blocks: int = 2
    z_channels: int = 16
    scale_factor: float = 0.3611
    shift_factor: float = 0.1159

    def __post_init__(self) -> None:
        for mult in self.ch_mult:
            if (self.ch * mult) % 32 != 0:
                raise ValueError(
                    f"ch * ch_mult must be a multiple of 32 (GroupNorm groups), "
                    f"got {self.ch} * {mult}"
                )

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


def _full(version: ModelVersion) -> DiTConfig:
    return DiTConfig(version=version)


def _tiny(version: ModelVersion) -> DiTConfig:
    return DiTConfig(
        vec_in_dim=768,  # the reference hard-codes global_proj_out to 768; keep it for parity
        context_in_dim=64,
        hidden_size=64,
        num_heads=2,
        depth=1,
        depth_single_blocks=1,
        axes_dim=(8, 12, 12),  # sums to head_dim 32
        connector_in_channels=TINY_QWEN_HIDDEN,
        connector_hidden_size=64,
        connector_heads=2,
        connector_depth=1,
        version=version,
    )


DIT_PRESETS: dict[str, DiTConfig] = {
    "v1.0": _full("v1.0"),
    "v1.1": _full("v1.1"),
    "v1.2": _full("v1.2"),
    "tiny-v1.0": _tiny("v1.0"),
    "tiny-v1.1": _tiny("v1.1"),
    "tiny-v1.2": _tiny("v1.2"),
}

AE_PRESETS: dict[str, AutoEncoderConfig] = {
    "flux": AutoEncoderConfig(),
    # Four levels like FLUX so the latent is still H/8 x W/8; narrow channels keep it fast.
    "tiny": AutoEncoderConfig(ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1),
}
