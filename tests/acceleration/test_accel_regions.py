"""`+regions` and the region-aware sampler (stepedit.acceleration.regions) on tiny seeded models.

The cached-context forward is checked against the DiT's own forward; with everything edited the
switch changes nothing; with a region the edited tokens alone run through the DiT.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from seeded import init_random_weights
from stepedit import sampling
from stepedit.acceleration.config import FAST, parse_mode
from stepedit.acceleration.regions import (
    ContextForward,
    RegionSampler,
    RegionSettings,
    StepKind,
    estimate_edited,
    latent_mask,
    plan_steps,
    region_sampler,
)
from stepedit.model import DIT_PRESETS, Step1XEditDiT
from stepedit.pipeline import EditOutput, EditPipeline
from stepedit.request import EditRequest
from stepedit.sampling import Conditioning

TXT_LEN = 8
GRID = (8, 8)  # tokens: a 256x256 image
LEVEL = 256
SIZE = (300, 200)


def make_dit(version: str = "v1.1") -> Step1XEditDiT:
    dit = Step1XEditDiT(DIT_PRESETS[f"tiny-{version}"])
    init_random_weights(dit, torch.Generator().manual_seed(0), std=0.2)
    return dit.eval()


def text(dit: Step1XEditDiT, batch: int, seed: int) -> Conditioning:
    generator = torch.Generator().manual_seed(seed)
    width = dit.config.connector_in_channels
    emb = torch.randn(batch, TXT_LEN, width, generator=generator)
    mapped = dit.config.has_text_token_mapping
    return Conditioning(
        emb=emb,
        mask=torch.ones(batch, TXT_LEN, dtype=torch.long),
        txt_ids=torch.zeros(batch, TXT_LEN, 3),
        text_embeds=torch.randn(batch, TXT_LEN, width, generator=generator) if mapped else None,
        text_mask=torch.ones(batch, TXT_LEN, dtype=torch.long) if mapped else None,
    )


def tokens(batch: int, seed: int) -> torch.Tensor:
    num = GRID[0] * GRID[1]
    return torch.randn(batch, num, 64, generator=torch.Generator().manual_seed(seed))


def ids(batch: int) -> torch.Tensor:
    return sampling.prepare_image_ids(batch, 2 * GRID[0], 2 * GRID[1], "offset")


# --- the cached-context forward -----------------------------------------------------------------


@pytest.mark.parametrize("version", ["v1.1", "v1.2"])
@torch.no_grad()
def test_the_context_forward_is_the_dit_forward(version: str) -> None:
    dit = make_dit(version)
    x = torch.cat([tokens(2, 1), tokens(2, 2)], dim=1)  # [noisy | reference]
    img_ids, cond = ids(2), text(dit, 2, 3)
    expected = sampling._velocity(dit, x, img_ids, 0.7, 1, cond)
    num = x.shape[1] // 2
    edit = torch.tensor([3, 4, 5, 11, 12, 20, 40, 63])
    unedited = torch.ones(num, dtype=torch.bool)
    unedited[edit] = False
    context_rows = torch.cat([unedited.nonzero().flatten(), torch.arange(num, 2 * num)])
    forward = ContextForward(dit, context_rows)
    captured = forward.capture(x, img_ids, 0.7, 1, cond, branch=0)
    torch.testing.assert_close(captured, expected, rtol=1e-5, atol=1e-5)
    # The edited tokens alone, attending to the context kept from the same state: the same
    # velocity as the whole forward gives them.
    region = forward.region(x[:, edit], img_ids[:, edit], 0.7, 1, cond, branch=0)
    torch.testing.assert_close(region, expected[:, edit], rtol=1e-4, atol=1e-5)


def test_plan_steps_follows_regione_at_28_steps() -> None:
    plan = plan_steps(28, RegionSettings())
    assert plan.partition == 5  # six full steps, then the region is decided
    capture = [i for i, kind in enumerate(plan.kinds) if kind is StepKind.CAPTURE]
    assert capture == [6, 16]
    assert plan.kinds[26:] == (StepKind.FULL, StepKind.FULL)
    assert plan.kinds.count(StepKind.REGION) == 18
    assert plan.next_full(7) == 16 and plan.next_full(16) == 26
    assert not plan_steps(4, RegionSettings()).has_region_steps


def test_estimate_keeps_blocks_and_drops_isolated_tokens() -> None:
    source = tokens(1, 5)
    x0 = source.clone()
    grid = x0.view(1, *GRID, 64)
    grid[0, 2:6, 2:6] = -grid[0, 2:6, 2:6]  # a 4x4 block turned around: edited
    grid[0, 7, 0] = -grid[0, 7, 0]  # one stray token
    edited = estimate_edited(x0, source, 0.88, GRID).view(*GRID)
    expected = torch.zeros(GRID, dtype=torch.bool)
    expected[1:7, 1:7] = True  # the block with a one-token margin; the stray one dropped
    assert torch.equal(edited, expected)
    assert not estimate_edited(source, source, 0.88, GRID).any()


def test_latent_mask_feathers_outwards_only() -> None:
    mask = Image.new("L", (128, 128), 0)
    ImageDraw.Draw(mask).rectangle((32, 32, 95, 95), fill=255)
    m = sampling.unpack(latent_mask(mask, 128, 128, 1, feather=1.0), 128, 128)[0, 0]
    assert torch.all(m[4:12, 4:12] == 1.0)  # the inside is untouched
    assert 0.0 < m[3, 6] < 1.0 and 0.0 < m[12, 6] < 1.0  # just outside: joins late
    assert m[0, 0] == 0.0  # far outside: never


# --- the sampler ----------------------------------------------------------------------------------


def test_a_mask_that_frees_nothing_calls_no_dit() -> None:
    noise, source = tokens(1, 1), tokens(1, 2)
    schedule = sampling.get_schedule(4, 64)
    sampler = RegionSampler(
        RegionSettings(),
        noise=noise,
        mask=torch.zeros_like(noise),
        estimate=False,
        steps_before=0,
        total_steps=4,
        grid=GRID,
    )
    steps: list[int] = []
    out = sampler.denoise(
        "no model",  # type: ignore[arg-type]
        noise,
        ids(1),
        source,
        text(make_dit(), 1, 3),
        None,
        schedule,
        1.0,
        callback=lambda step, total: steps.append(step),
    )
    assert torch.equal(out, source) and steps == [1, 2, 3, 4]


@torch.no_grad()
def test_velocity_reuse_is_never_twice_in_a_row() -> None:
    dit = make_dit()
    noise, source = tokens(1, 1), tokens(1, 2)
    edited = torch.zeros(1, *GRID, 16)
    edited[:, 2:6, 2:6] = 1.0
    mask = sampling.pack(
        edited.permute(0, 3, 1, 2).repeat_interleave(2, 2).repeat_interleave(2, 3)
    )  # [1, 64, 64]: a 4x4-token square
    runs: dict[float, torch.Tensor] = {}
    for reuse in (0.0, 100.0):
        settings = RegionSettings(accelerate=True, reuse_threshold=reuse)
        sampler = RegionSampler(
            settings,
            noise=noise,
            mask=mask,
            estimate=False,
            steps_before=0,
            total_steps=12,
            grid=GRID,
        )
        cond, uncond = text(dit, 1, 3), text(dit, 1, 4)
        schedule = sampling.get_schedule(12, 64)
        runs[reuse] = sampler.denoise(dit, noise, ids(1), source, cond, uncond, schedule, 4.0)
        stats = sampler.stats
        assert len(stats.trace) == stats.full + stats.region + stats.reused == 12
        assert stats.edited_fraction == pytest.approx(16 / 64)
        if reuse == 0.0:
            assert stats.reused == 0 and stats.region > 0
        else:
            assert stats.reused > 0
            assert "reused,reused" not in ",".join(stats.trace)
    unchanged = mask[0, :, 0] == 0
    for out in runs.values():
        assert torch.equal(out[0, unchanged], source[0, unchanged])


@torch.no_grad()
def test_each_cfg_branch_keeps_its_own_context() -> None:
    """Batched [positive | negative] and two separate forwards (v1.2's prompts of different
    lengths) give the same region steps: each branch attends to its own cached context."""
    dit = make_dit()
    noise, source = tokens(1, 1), tokens(1, 2)
    square = torch.zeros(1, 16, 2 * GRID[0], 2 * GRID[1])
    square[..., 4:12, 4:12] = 1.0
    mask = sampling.pack(square)
    cond, uncond = text(dit, 1, 3), text(dit, 1, 4)
    results = []
    for batch_cfg in (True, False):
        sampler = RegionSampler(
            RegionSettings(accelerate=True, reuse_threshold=0.0),
            noise=noise,
            mask=mask,
            estimate=False,
            steps_before=0,
            total_steps=10,
            grid=GRID,
        )
        schedule = sampling.get_schedule(10, 64)
        results.append(
            sampler.denoise(
                dit, noise, ids(1), source, cond, uncond, schedule, 4.0, batch_cfg=batch_cfg
            )
        )
        assert sampler.stats.region > 0
    torch.testing.assert_close(results[0], results[1], rtol=1e-4, atol=1e-4)


# --- through the pipeline ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipe() -> EditPipeline:
    return EditPipeline.from_pretrained("dummy:tiny-v1.1", device="cpu")


@pytest.fixture(scope="module")
def source() -> Image.Image:
    gradient = Image.linear_gradient("L").resize(SIZE)
    return Image.merge("RGB", (gradient, gradient.rotate(90).resize(SIZE), gradient))


def edit(
    pipe: EditPipeline, settings: RegionSettings, image: Image.Image, **kwargs: object
) -> EditOutput:
    mask = kwargs.pop("mask", None)
    options: dict[str, object] = {
        "prompt": "add a red hat",
        "num_inference_steps": 8,
        "size_level": LEVEL,
        "seed": 7,
    }
    options.update(kwargs)
    pipe.region_settings = settings
    try:
        return pipe(image, EditRequest(**options), mask=mask)  # type: ignore[arg-type]
    finally:
        pipe.region_settings = RegionSettings()


def test_regions_with_everything_edited_equals_exact(
    pipe: EditPipeline, source: Image.Image
) -> None:
    exact = edit(pipe, RegionSettings(), source, num_images=2)
    # Above 1 every token counts as edited: the region path is not taken.
    regions = edit(pipe, RegionSettings(accelerate=True, threshold=1.5), source, num_images=2)
    assert [i.tobytes() for i in regions.images] == [i.tobytes() for i in exact.images]
    assert regions.latents is not None and exact.latents is not None
    assert regions.latents.equal(exact.latents)


def test_regions_run_the_edited_tokens_only(pipe: EditPipeline, source: Image.Image) -> None:
    mask = Image.new("L", SIZE, 0)
    ImageDraw.Draw(mask).rectangle((100, 50, 220, 150), fill=255)
    out = edit(pipe, RegionSettings(accelerate=True), source, mask=mask)
    inside = np.asarray(mask) > 0
    result, original = np.asarray(out.images[0]), np.asarray(source)
    assert np.array_equal(result[~inside], original[~inside])
    assert np.abs(result[inside].astype(int) - original[inside]).mean() > 5
    exact = edit(pipe, RegionSettings(), source, mask=mask)
    # An approximation of the exact masked edit (so the region path ran), not another picture.
    difference = np.abs(result.astype(int) - np.asarray(exact.images[0]))
    assert 0 < difference[inside].mean() < 10


def test_the_regions_switch() -> None:
    from stepedit.acceleration import apply_optimizations

    assert FAST.regions and not FAST.is_exact
    assert parse_mode("exact+regions").regions
    assert not parse_mode("exact+regions").is_exact
    assert not parse_mode("fast-regions").regions
    pipeline = EditPipeline.from_pretrained("dummy:tiny-v1.1", device="cpu")
    applied = apply_optimizations(pipeline, parse_mode("plain+regions"))
    assert pipeline.region_settings.accelerate and applied.summary()["regions"] is True
    apply_optimizations(pipeline, parse_mode("plain"))
    assert not pipeline.region_settings.accelerate


def test_the_plain_sampler_serves_edits_without_regions() -> None:
    noise = torch.zeros(1, 16, 32, 48)
    assert region_sampler(RegionSettings(), None, noise, 8, 8) is None
    accelerated = region_sampler(RegionSettings(accelerate=True), None, noise, 28, 14)
    assert accelerated is not None and accelerated.mask is None  # +regions alone: estimated
    assert accelerated.steps_before == 14 and accelerated.grid == (16, 24)
