"""Each exact optimization gives the plain path's output to float tolerance (tiny models, CPU)."""

from __future__ import annotations

import itertools
import shutil

import pytest
import torch
from accel_tiny_edit import make_inputs  # type: ignore[import-not-found]
from torch import nn

from seeded import init_random_weights
from stepedit.acceleration import AccelerationUnavailable, OptimizationConfig, preset
from stepedit.acceleration.bench import sample_image
from stepedit.acceleration.compile import compile_blocks
from stepedit.acceleration.fp8 import check_fp8_device
from stepedit.acceleration.offload import StreamedModule
from stepedit.acceleration.vae_tiling import decode_tiled, tile_starts, tiled_decoder
from stepedit.model import AE_PRESETS, AutoEncoder
from stepedit.pipeline import EditPipeline
from stepedit.request import EditRequest


def test_batched_cfg_equals_two_forwards(tiny_dit) -> None:
    x = make_inputs(10, steps=4)
    batched = x.denoise(tiny_dit, batch_cfg=True)
    sequential = x.denoise(tiny_dit, batch_cfg=False)
    assert torch.allclose(batched, sequential, rtol=1e-4, atol=1e-4)


def _final_latents(pipeline: EditPipeline) -> torch.Tensor:
    """The denoised latents of a fixed 256 px edit."""
    request = EditRequest(prompt="make it red", num_inference_steps=2, seed=3, size_level=256)
    latents = pipeline(sample_image(256), request).latents
    assert latents is not None
    return latents


@pytest.mark.slow
def test_compiled_blocks_equal_eager() -> None:
    if shutil.which("g++") is None and shutil.which("cc") is None:
        pytest.skip("no C++ compiler for the CPU inductor backend")
    # The same shapes as the bench test's 256 px edit, so its compile hits inductor's cache.
    pipeline = EditPipeline.from_pretrained("dummy:tiny-v1.1", device="cpu", dtype=torch.float32)
    keys = list(pipeline.dit.state_dict())
    eager = _final_latents(pipeline)
    assert compile_blocks(pipeline.dit) == 2
    compiled = _final_latents(pipeline)
    assert torch.allclose(compiled, eager, rtol=1e-4, atol=1e-4)
    # The state dict is the DiT's own: a checkpoint loads into a compiled model unchanged.
    assert list(pipeline.dit.state_dict()) == keys


class _PixelDecoder(nn.Module):
    """Purely local (1x1 conv + nearest upsampling): tiling must reproduce it exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(16, 3, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return nn.functional.interpolate(self.conv(z), scale_factor=8, mode="nearest")


def test_tiles_cover_every_latent_pixel_with_the_overlap() -> None:
    assert tile_starts(40, 64, 16) == [0]
    starts = tile_starts(100, 32, 8)
    assert starts[0] == 0 and starts[-1] == 100 - 32
    assert all(b - a <= 32 - 8 for a, b in itertools.pairwise(starts))


def test_tiled_decode_is_exact_for_a_local_decoder() -> None:
    torch.manual_seed(0)
    decoder = _PixelDecoder()
    z = torch.randn(1, 16, 40, 56)
    with torch.no_grad():
        assert torch.allclose(decode_tiled(decoder, z, tile=16, overlap=4), decoder(z), atol=1e-6)


def test_tiled_decode_of_the_vae_stays_close_and_small_images_are_untouched() -> None:
    ae = AutoEncoder(AE_PRESETS["tiny"])
    init_random_weights(ae, torch.Generator().manual_seed(0))
    z = torch.randn(1, 16, 24, 24, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = ae.decode(z)
        tiled = decode_tiled(ae.decode, z, tile=16, overlap=8)
        untouched = tiled_decoder(ae.decode, min_pixels=10**9)(z)
    assert torch.equal(untouched, whole)
    # GroupNorm and the mid-block attention see one tile: close, not bit-exact. A random VAE
    # (no trained statistics) on four small tiles is the worst case; measured about 0.23.
    error = float((tiled - whole).abs().mean() / whole.abs().mean())
    print(f"VAE tiling relative mean error: {error:.3g}")
    assert error < 0.35


def test_streamed_module_computes_the_same() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4))
    x = torch.randn(3, 8)
    expected = model(x)
    streamer = StreamedModule(model, torch.device("cpu"))
    assert torch.equal(model(x), expected)
    streamer.remove()
    assert torch.equal(model(x), expected)


def test_fp8_refuses_a_cpu_pipeline_clearly() -> None:
    with pytest.raises(AccelerationUnavailable, match="FP8 needs"):
        check_fp8_device(torch.device("cpu"))


def test_presets_compose_the_switches() -> None:
    assert preset("exact").is_exact and preset("plain").is_exact
    assert preset("exact").batch_cfg and preset("exact").compile_blocks
    fast = preset("fast")
    assert fast.fp8 and fast.step_cache is not None and not fast.is_exact
    low = preset("24gb")
    assert low.fp8 and low.offload_mllm and low.vae_tiling and low.step_cache is None
    assert preset("exact").offload_mllm and preset("exact").is_exact
    assert not preset("exact").vae_tiling
    assert OptimizationConfig() == preset("plain")
    with pytest.raises(ValueError, match="unknown optimization preset"):
        preset("turbo")


def test_streaming_the_tiny_qwen_keeps_its_encodings() -> None:
    pipeline = EditPipeline.from_pretrained("dummy:tiny-v1.1", device="cpu", dtype=torch.float32)
    image = sample_image(256)
    expected = [pipeline.encoder.encode(p, image).emb for p in ("add a hat", "")]
    streamer = StreamedModule(pipeline.components.text_model, torch.device("cpu"))
    got = [pipeline.encoder.encode(p, image).emb for p in ("add a hat", "")]
    streamer.remove()
    assert all(torch.equal(g, e) for g, e in zip(got, expected, strict=True))


def test_presets_set_the_pipelines_own_switches() -> None:
    from stepedit.acceleration import apply_optimizations

    pipeline = EditPipeline.from_pretrained("dummy:tiny-v1.1", device="cpu", dtype=torch.float32)
    applied = apply_optimizations(pipeline, OptimizationConfig(batch_cfg=False))
    assert pipeline.batch_cfg is False and pipeline.cache_negative_encoding is False
    assert applied.summary()["batch_cfg"] is False
    apply_optimizations(pipeline, OptimizationConfig(batch_cfg=True, cache_negative_encoding=True))
    assert pipeline.batch_cfg and pipeline.cache_negative_encoding
