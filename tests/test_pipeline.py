"""EditPipeline on the tiny random model (dummy:tiny-v1.1) on CPU: behaviour a user would notice."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stepedit import sampling
from stepedit.errors import InvalidInput
from stepedit.images import to_pil, to_tensor, working_size
from stepedit.pipeline import NOISE_DTYPE, EditOutput, EditPipeline, PipelineProgress
from stepedit.request import EditRequest

STEPS = 2
LEVEL = 256  # smallest size level: keeps every run around a second on 2 cores


@pytest.fixture(scope="module")
def pipe() -> EditPipeline:
    return EditPipeline.from_pretrained("dummy:tiny-v1.1", device="cpu")


@pytest.fixture(scope="module")
def source() -> Image.Image:
    gradient = Image.linear_gradient("L").resize((300, 200))
    return Image.merge("RGB", (gradient, gradient.rotate(90).resize((300, 200)), gradient))


def edit(
    pipe: EditPipeline,
    image: Image.Image,
    *,
    latents: torch.Tensor | None = None,
    callback: object = None,
    **kwargs: object,
) -> EditOutput:
    options: dict[str, object] = {"num_inference_steps": STEPS, "size_level": LEVEL, "seed": 7}
    options.update(kwargs)
    request = EditRequest(prompt="add a red hat", **options)  # type: ignore[arg-type]
    return pipe(image, request, latents=latents, callback=callback)  # type: ignore[arg-type]


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_same_seed_same_image_other_seed_differs(pipe: EditPipeline, source: Image.Image) -> None:
    first = edit(pipe, source, seed=1)
    again = edit(pipe, source, seed=1)
    other = edit(pipe, source, seed=2)
    assert first.seeds == [1]
    assert first.images[0].tobytes() == again.images[0].tobytes()
    assert first.images[0].tobytes() != other.images[0].tobytes()


def test_negative_prompt_and_guidance_change_the_result(
    pipe: EditPipeline, source: Image.Image
) -> None:
    base = edit(pipe, source).images[0].tobytes()
    assert edit(pipe, source, negative_prompt="blurry").images[0].tobytes() != base
    assert edit(pipe, source, guidance_scale=2.0).images[0].tobytes() != base


@pytest.mark.parametrize("size", [(1000, 333), (333, 1000), (777, 555)])
def test_sizes_follow_the_reference_rules(pipe: EditPipeline, size: tuple[int, int]) -> None:
    image = Image.new("RGB", size, (90, 140, 30))
    out = edit(pipe, image, num_inference_steps=1)
    assert (out.width, out.height) == working_size(*size, LEVEL)
    assert out.images[0].size == size  # resized back to the source, as the reference does
    working = edit(pipe, image, num_inference_steps=1, output_size="working")
    assert working.images[0].size == working_size(*size, LEVEL)


@pytest.mark.slow
def test_size_level_512(pipe: EditPipeline) -> None:
    out = edit(pipe, Image.new("RGB", (777, 555)), num_inference_steps=1, size_level=512)
    assert (out.width, out.height) == (592, 432)


def test_strength_zero_is_the_vae_round_trip(pipe: EditPipeline, source: Image.Image) -> None:
    out = edit(pipe, source, strength=0.0, output_size="working")
    working = source.resize(working_size(*source.size, LEVEL), Image.Resampling.LANCZOS)
    _, latents = pipe.prepare_latents(to_tensor(working), [7], out.height, out.width)
    expected = pipe.decode(latents)[0]
    assert out.images[0].tobytes() == expected.tobytes()
    full = edit(pipe, source, strength=1.0, output_size="working")
    assert np.abs(pixels(full.images[0]) - pixels(out.images[0])).mean() > 1.0


def test_strength_runs_part_of_the_schedule(pipe: EditPipeline, source: Image.Image) -> None:
    seen: list[PipelineProgress] = []
    edit(pipe, source, num_inference_steps=4, strength=0.5, callback=seen.append)
    steps = [p.step for p in seen if p.stage == "denoise"]
    assert steps == [1, 2]
    assert seen[0].stage == "encode" and seen[-1].stage == "decode"


def test_several_images_each_reproducible_alone(pipe: EditPipeline, source: Image.Image) -> None:
    batch = edit(pipe, source, seed=100, num_images=3)
    assert batch.seeds == [100, 101, 102]
    assert len(batch.images) == 3
    assert batch.images[0].tobytes() != batch.images[1].tobytes()
    alone = edit(pipe, source, seed=101)
    # batched matmuls may round differently from a batch of one: allow one grey level
    assert np.abs(pixels(alone.images[0]) - pixels(batch.images[1])).max() <= 1


def test_random_seed_is_drawn_and_reported(pipe: EditPipeline, source: Image.Image) -> None:
    out = edit(pipe, source, seed=None)
    assert len(out.seeds) == 1 and 0 <= out.seeds[0] < 2**31
    again = edit(pipe, source, seed=out.seeds[0])
    assert again.images[0].tobytes() == out.images[0].tobytes()


def test_given_latents_replace_the_seeded_noise(pipe: EditPipeline, source: Image.Image) -> None:
    width, height = working_size(*source.size, LEVEL)
    working = source.resize((width, height), Image.Resampling.LANCZOS)
    noise, _ = pipe.prepare_latents(to_tensor(working), [7], height, width)
    from_seed = edit(pipe, source, seed=7)
    from_latents = edit(pipe, source, seed=7, latents=noise.clone())
    assert from_seed.images[0].tobytes() == from_latents.images[0].tobytes()
    other = edit(pipe, source, seed=7, latents=torch.zeros_like(noise))
    assert other.images[0].tobytes() != from_seed.images[0].tobytes()


def test_output_metadata(pipe: EditPipeline, source: Image.Image) -> None:
    out = edit(pipe, source)
    assert out.prompt == "add a red hat"
    assert out.passes == ["diffusion"]
    assert {"encode", "denoise", "decode", "total"} <= set(out.timings)


def test_qwen_sees_the_reference_float_round_trip() -> None:
    image = Image.new("RGB", (32, 16), (255, 128, 3))
    assert to_pil(to_tensor(image)[0]).tobytes() == image.tobytes()


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("num_inference_steps", 0),
        ("num_inference_steps", 101),
        ("guidance_scale", -1.0),
        ("strength", 1.5),
        ("num_images", 5),
        ("size_level", 100),
        ("size_level", 520),
        ("seed", -3),
        ("output_size", "huge"),
        ("enable_thinking", True),
        ("cfg_rescale", "sometimes"),
        ("model", "v1.2"),
    ],
)
def test_check_inputs_names_the_param(
    pipe: EditPipeline, source: Image.Image, param: str, value: object
) -> None:
    with pytest.raises(InvalidInput) as info:
        pipe(source, EditRequest(prompt="add a hat", **{param: value}))  # type: ignore[arg-type]
    assert info.value.param == param
    assert param in str(info.value)


def test_check_inputs_rejects_empty_prompt_and_bad_latents(
    pipe: EditPipeline, source: Image.Image
) -> None:
    with pytest.raises(InvalidInput) as info:
        pipe(source, EditRequest(prompt="  "))
    assert info.value.param == "prompt"
    with pytest.raises(InvalidInput) as info:
        edit(pipe, source, latents=torch.zeros(1, 16, 8, 8))
    assert info.value.param == "latents"


def test_offload_and_cfg_layout_give_the_same_image(
    pipe: EditPipeline, source: Image.Image
) -> None:
    expected = edit(pipe, source).images[0].tobytes()
    offloaded = EditPipeline.from_pretrained("dummy:tiny-v1.1", device="cpu", offload=True)
    assert edit(offloaded, source).images[0].tobytes() == expected
    offloaded.batch_cfg = False
    split = edit(offloaded, source).images[0]
    assert np.abs(pixels(split) - pixels(edit(pipe, source).images[0])).max() <= 1


def test_cfg_rescale_option_selects_the_rule(
    pipe: EditPipeline, source: Image.Image, monkeypatch: pytest.MonkeyPatch
) -> None:
    # v1.1's release rescales only while t > 0.93; every_step is the diffusers pipeline's rule.
    seen: list[float] = []
    combine = sampling.cfg_combine

    def spy(
        cond: torch.Tensor,
        uncond: torch.Tensor,
        scale: float,
        t: float,
        above: float,
        k: float = 0.4,
    ) -> torch.Tensor:
        seen.append(above)
        return combine(cond, uncond, scale, t, above, k)

    monkeypatch.setattr(sampling, "cfg_combine", spy)
    for option, expected in (
        (None, 0.93),
        ("official", 0.93),
        ("every_step", -math.inf),
        ("never", math.inf),
    ):
        seen.clear()
        edit(pipe, source, cfg_rescale=option)
        assert seen == [expected] * STEPS, option


def test_original_layout_draws_noise_first_from_the_device_generator(
    pipe: EditPipeline, source: Image.Image
) -> None:
    assert pipe.reference == "official"
    assert pipe.processor is pipe.components.processor  # the PIL processor, as the official code
    width, height = working_size(*source.size, LEVEL)
    pixels_ = to_tensor(source.resize((width, height)))
    noise, _ = pipe.prepare_latents(pixels_, [7, 8], height, width)
    shape = (1, 16, height // 8, width // 8)
    for row, seed in enumerate((7, 8)):
        expected = torch.randn(
            shape, generator=torch.Generator().manual_seed(seed), dtype=NOISE_DTYPE
        )
        torch.testing.assert_close(noise[row : row + 1], expected.float(), rtol=0, atol=0)


@pytest.fixture(scope="module")
def diffusers_pipe(tmp_path_factory: pytest.TempPathFactory) -> EditPipeline:
    from stepedit.weights import load_components, write_checkpoint

    folder: Path = tmp_path_factory.mktemp("diffusers-v11")
    components = load_components("dummy:tiny-v1.1", device="cpu", dtype=torch.float32)
    write_checkpoint(components, folder, "diffusers")
    return EditPipeline.from_pretrained(folder, device="cpu")


def test_diffusers_layout_draws_the_posterior_first_from_one_cpu_generator(
    diffusers_pipe: EditPipeline, source: Image.Image
) -> None:
    # As Step1XEditPipeline(generator=torch.Generator().manual_seed(7)): the VAE posterior
    # sample, then the starting noise, from the same generator.
    assert diffusers_pipe.reference == "diffusers"
    width, height = working_size(*source.size, LEVEL)
    pixels_ = to_tensor(source.resize((width, height)))
    noise, ref = diffusers_pipe.prepare_latents(pixels_, [7], height, width)
    ae = diffusers_pipe.ae
    mean, logvar = torch.chunk(ae.encoder(pixels_ * 2 - 1), 2, dim=1)
    generator = torch.Generator().manual_seed(7)
    sample = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=generator)
    expected_noise = torch.randn(noise.shape, generator=generator, dtype=NOISE_DTYPE)
    torch.testing.assert_close(noise, expected_noise.float(), rtol=0, atol=0)
    expected_ref = ae.scale_factor * (sample - ae.shift_factor)
    torch.testing.assert_close(ref, expected_ref, rtol=0, atol=0)


def test_diffusers_layout_follows_the_diffusers_pipeline_rules(
    diffusers_pipe: EditPipeline, source: Image.Image
) -> None:
    # Qwen's images through transformers' torchvision ("fast") processor, as diffusers loads it.
    from stepedit.model.qwen import TensorQwenImageProcessor

    assert isinstance(diffusers_pipe.processor.image_processor, TensorQwenImageProcessor)
    # No negative pass at guidance 1 (do_true_cfg = true_cfg_scale > 1), rounding at output.
    calls: list[int] = []
    dit = diffusers_pipe.dit
    diffusers_pipe.dit = lambda **kw: calls.append(kw["img"].shape[0]) or dit(**kw)  # type: ignore[assignment,func-returns-value]
    try:
        edit(diffusers_pipe, source, guidance_scale=1.0)
        assert calls == [1, 1]
        calls.clear()
        # ... and the positive and the negative prompt in forwards of their own, as the
        # pipeline runs them (the official code batches them: one forward of 2).
        edit(diffusers_pipe, source, guidance_scale=4.0)
        assert calls == [1, 1, 1, 1]
    finally:
        diffusers_pipe.dit = dit
    dark = torch.full((1, 3, 2, 2), 0.6 / 255)
    assert np.asarray(to_pil(dark[0], rounding=True)).max() == 1
    assert np.asarray(to_pil(dark[0])).max() == 0


def test_same_weights_same_image_in_both_layouts_with_the_same_latents(
    pipe: EditPipeline, diffusers_pipe: EditPipeline, source: Image.Image
) -> None:
    width, height = working_size(*source.size, LEVEL)
    latents = torch.randn(
        1, 16, height // 8, width // 8, generator=torch.Generator().manual_seed(1)
    )
    a = edit(pipe, source, latents=latents, strength=1.0, cfg_rescale="every_step")
    b = edit(diffusers_pipe, source, latents=latents, strength=1.0, cfg_rescale="every_step")
    assert a.latents is not None and b.latents is not None
    # Same model, same start; only the references' float rounding of the schedule differs.
    torch.testing.assert_close(a.latents, b.latents, rtol=1e-3, atol=1e-3)


def test_every_release_places_the_reference_image_by_its_rule() -> None:
    from stepedit.request import VERSIONS

    assert [VERSIONS[v].reference_positions for v in ("v1.0", "v1.1", "v1.2")] == [
        "shared",
        "offset",
        "index",
    ]
    ids = sampling.prepare_image_ids(1, 4, 6, VERSIONS["v1.2"].reference_positions)
    assert ids[0, 6].tolist() == [1.0, 0.0, 0.0]


def test_requests_are_dataclasses_with_one_seed_rule(source: Image.Image) -> None:
    request = EditRequest(prompt="x")
    drawn = request.with_seed()
    assert drawn.seed is not None and drawn.with_seed() is drawn
    assert dataclasses.replace(drawn, num_images=3).seeds == [drawn.seed + i for i in range(3)]
