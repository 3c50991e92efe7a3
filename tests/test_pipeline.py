"""EditPipeline on the tiny random model (dummy:tiny-v1.1) on CPU: behaviour a user would notice."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from stepedit.errors import InvalidInput
from stepedit.images import to_pil, to_tensor, working_size
from stepedit.pipeline import EditOutput, EditPipeline, PipelineProgress

STEPS = 2
LEVEL = 256  # smallest size level: keeps every run around a second on 2 cores


@pytest.fixture(scope="module")
def pipe() -> EditPipeline:
    return EditPipeline.from_pretrained("dummy:tiny-v1.1", device="cpu")


@pytest.fixture(scope="module")
def source() -> Image.Image:
    gradient = Image.linear_gradient("L").resize((300, 200))
    return Image.merge("RGB", (gradient, gradient.rotate(90).resize((300, 200)), gradient))


def edit(pipe: EditPipeline, image: Image.Image, **kwargs: object) -> EditOutput:
    options: dict[str, object] = {"num_inference_steps": STEPS, "size_level": LEVEL, "seed": 7}
    options.update(kwargs)
    return pipe(image, "add a red hat", **options)  # type: ignore[arg-type]


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
    latents = pipe.encode_reference(to_tensor(working), [7])
    from stepedit import sampling

    expected = pipe.decode(sampling.pack(latents), out.height, out.width)[0]
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
    noise = pipe.prepare_noise([7], height, width)
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
    ],
)
def test_check_inputs_names_the_param(
    pipe: EditPipeline, source: Image.Image, param: str, value: object
) -> None:
    with pytest.raises(InvalidInput) as info:
        pipe(source, "add a hat", **{param: value})  # type: ignore[arg-type]
    assert info.value.param == param
    assert param in str(info.value)


def test_check_inputs_rejects_empty_prompt_and_bad_latents(
    pipe: EditPipeline, source: Image.Image
) -> None:
    with pytest.raises(InvalidInput) as info:
        pipe(source, "  ")
    assert info.value.param == "prompt"
    with pytest.raises(InvalidInput) as info:
        pipe(source, "add a hat", size_level=LEVEL, latents=torch.zeros(1, 16, 8, 8))
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


def test_reference_image_ids_match_the_official_v11_layout() -> None:
    from stepedit import sampling

    img_ids, _ = sampling.prepare_ids(1, 4, 6, 0, "v1.1")
    ref = img_ids[0, 6:].reshape(2, 3, 3)
    assert ref[0, 0].tolist() == [1.0, 1.0, 1.0]
    assert ref[1, 2].tolist() == [1.0, 2.0, 3.0]
