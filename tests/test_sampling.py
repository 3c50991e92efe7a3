import itertools
import math

import numpy as np
import pytest
import torch

from seeded import init_random_weights
from stepedit import sampling
from stepedit.model import DIT_PRESETS, Step1XEditDiT
from stepedit.sampling import Conditioning


def test_schedule_endpoints_and_length() -> None:
    ts = sampling.get_schedule(28, 4096).times
    assert len(ts) == 29
    assert ts[0] == pytest.approx(1.0) and ts[-1] == 0.0
    assert all(a > b for a, b in itertools.pairwise(ts))


def test_schedule_values_hand_computed() -> None:
    # 256 tokens -> mu = base_shift = 0.5; t' = e^mu / (e^mu + 1/t - 1).
    schedule = sampling.get_schedule(4, 256)
    expected = [1.0, 0.8318243, 0.6224593, 0.3546612, 0.0]
    assert schedule.times == pytest.approx(expected, abs=1e-6)
    assert schedule.model_times == schedule.times[:-1] and schedule.model_scale == 1
    # 4096 tokens -> mu = max_shift = 1.15; at t = 0.5 that is sigmoid(1.15).
    assert sampling.get_schedule(2, 4096).times[1] == pytest.approx(0.7595109, abs=1e-6)
    # 1024 tokens -> mu = 0.5 + 0.65 * (1024 - 256) / 3840 = 0.63.
    assert sampling.get_schedule(2, 1024).times[1] == pytest.approx(
        1 / (1 + math.exp(-0.63)), abs=1e-6
    )


def test_schedule_without_shift_is_linear() -> None:
    assert sampling.get_schedule(4, 4096, shift=False).times == pytest.approx(
        [1, 0.75, 0.5, 0.25, 0]
    )


def test_larger_images_spend_more_steps_at_high_noise() -> None:
    small, large = sampling.get_schedule(10, 256), sampling.get_schedule(10, 4096)
    assert all(big >= s for big, s in zip(large.times, small.times, strict=True))


def test_diffusers_schedule_is_the_schedulers_float32_numpy_path() -> None:
    schedule = sampling.get_schedule(28, 1024, reference="diffusers")
    mu = 0.5 + 0.65 * (1024 - 256) / 3840
    sigmas = np.linspace(1.0, 1 / 28, 28).astype(np.float32)
    shifted = (math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1))).astype(np.float32)
    assert schedule.times == [*shifted.tolist(), 0.0]
    # The DiT is told 1000 t in float32, divided by 1000 in the latents' dtype.
    assert schedule.model_scale == 1000
    assert schedule.model_times == (torch.from_numpy(shifted) * 1000).tolist()
    assert schedule.upcast_step
    # Both references schedule the same times up to float32 rounding.
    official = sampling.get_schedule(28, 1024).times
    assert schedule.times == pytest.approx(official, abs=1e-6)


def test_pack_unpack_round_trip_and_patch_layout() -> None:
    latents = torch.randn(2, 16, 6, 8)
    tokens = sampling.pack(latents)
    assert tokens.shape == (2, 12, 64)
    # token 0 = the top-left 2x2 patch, channel-major: (c, ph, pw).
    torch.testing.assert_close(tokens[0, 0], latents[0, :, :2, :2].reshape(-1))
    torch.testing.assert_close(sampling.unpack(tokens, 48, 64), latents)


@pytest.mark.parametrize(
    ("rule", "offset"),
    [("shared", (0, 0, 0)), ("offset", (1, 1, 1)), ("index", (1, 0, 0))],
)
def test_reference_image_positions_per_release_rule(rule: str, offset: tuple[int, ...]) -> None:
    img_ids = sampling.prepare_image_ids(3, 4, 6, rule)  # type: ignore[arg-type]
    assert img_ids.shape == (3, 12, 3)
    noisy, ref = img_ids[:, :6], img_ids[:, 6:]
    # (row, col) of the packed 2x3 token grid, row-major.
    grid = torch.tensor([[0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 1, 0], [0, 1, 1], [0, 1, 2]]).float()
    torch.testing.assert_close(noisy[0], grid)
    # v1.0 shares the noisy positions; v1.1 builds them from ones (every axis + 1); v1.2 sets
    # only the index axis to 1 (Step1XEditPipelineV1P2.prepare_latents).
    torch.testing.assert_close(ref[0], grid + torch.tensor(offset).float())


def test_strength_zero_keeps_start_latents_and_one_is_pure_noise() -> None:
    noise, init = torch.randn(1, 12, 64), torch.randn(1, 12, 64)
    schedule = sampling.get_schedule(10, 12)
    x, rest = sampling.noise_for_strength(noise, init, schedule, 0.0)
    torch.testing.assert_close(x, init, rtol=0, atol=0)
    assert rest.times == [0.0] and rest.num_steps == 0
    x, rest = sampling.noise_for_strength(noise, init, schedule, 1.0)
    torch.testing.assert_close(x, noise, rtol=0, atol=0)
    assert rest == schedule


def test_partial_strength_blends_at_the_start_time() -> None:
    noise, init = torch.randn(1, 12, 64), torch.randn(1, 12, 64)
    schedule = sampling.get_schedule(10, 12)
    x, rest = sampling.noise_for_strength(noise, init, schedule, 0.6)
    t = schedule.times[4]  # int((1 - 0.6) * 10) = 4
    assert rest.times == schedule.times[4:] and rest.model_times == schedule.model_times[4:]
    torch.testing.assert_close(x, t * noise + (1 - t) * init)
    with pytest.raises(ValueError):
        sampling.noise_for_strength(noise, init, schedule, 1.5)


def test_cfg_below_truncate_is_plain_cfg() -> None:
    cond, uncond = torch.randn(1, 5, 64) * 4, torch.randn(1, 5, 64) * 4
    plain = uncond + 6.0 * (cond - uncond)
    # v1.0: truncate 1.0, so even t = 1.0 is plain CFG.
    torch.testing.assert_close(sampling.cfg_combine(cond, uncond, 6.0, 1.0, 1.0), plain)
    torch.testing.assert_close(sampling.cfg_combine(cond, uncond, 6.0, 0.5, 0.93), plain)


def test_cfg_above_truncate_divides_large_differences_by_norm_power() -> None:
    uncond = torch.zeros(1, 2, 4)
    cond = torch.tensor([[[4.0, 0, 0, 0], [0.5, 0, 0, 0]]])  # norms 4 and 0.5
    out = sampling.cfg_combine(cond, uncond, 6.0, 0.95, 0.93, k=0.4)
    torch.testing.assert_close(out[0, 0], 6.0 * cond[0, 0] / 4.0**0.4)
    torch.testing.assert_close(out[0, 1], 6.0 * cond[0, 1])  # norm < 1: unchanged


@pytest.fixture(scope="module")
def model() -> Step1XEditDiT:
    dit = Step1XEditDiT(DIT_PRESETS["tiny-v1.1"])
    init_random_weights(dit, torch.Generator().manual_seed(0), std=0.1)
    return dit.eval()


def conditioning(batch: int, length: int, seed: int, padded: bool = False) -> Conditioning:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, length, dtype=torch.long)
    if padded:
        mask[:, length // 2 :] = 0
    return Conditioning(
        torch.randn(batch, length, 64, generator=g) * 3, mask, torch.zeros(batch, length, 3)
    )


def denoise_inputs(batch: int = 2) -> dict:
    g = torch.Generator().manual_seed(2)
    return {
        "img": torch.randn(batch, 4, 64, generator=g),
        "img_ids": sampling.prepare_image_ids(batch, 4, 4, "offset"),
        "ref_img": torch.randn(batch, 4, 64, generator=g),
        "positive": conditioning(batch, 6, 3),
        "negative": conditioning(batch, 6, 4, padded=True),
        "schedule": sampling.get_schedule(4, 4),
        "guidance_scale": 6.0,
    }


@torch.no_grad()
def test_batched_cfg_equals_two_forwards(model: Step1XEditDiT) -> None:
    x = denoise_inputs()
    batched = sampling.denoise(model, **x, batch_cfg=True)
    separate = sampling.denoise(model, **x, batch_cfg=False)
    assert batched.shape == x["img"].shape
    torch.testing.assert_close(batched, separate, atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_prompts_of_different_lengths_run_as_two_forwards(model: Step1XEditDiT) -> None:
    # v1.2 prompts are unpadded: a positive and a negative of different lengths cannot share
    # one batch, so even with batch_cfg the sampler runs one forward each.
    x = dict(denoise_inputs(), negative=conditioning(2, 3, 5))
    calls: list[int] = []

    def counting(**kwargs: torch.Tensor) -> torch.Tensor:
        calls.append(kwargs["llm_embedding"].shape[1])
        return model(**kwargs)

    out = sampling.denoise(counting, **x, batch_cfg=True)  # type: ignore[arg-type]
    assert calls == [6, 3] * 4
    torch.testing.assert_close(out, sampling.denoise(model, **x, batch_cfg=False))


@torch.no_grad()
def test_denoise_reports_each_step_and_uses_the_reference(model: Step1XEditDiT) -> None:
    x = denoise_inputs()
    seen: list[tuple[int, int]] = []
    out = sampling.denoise(model, **x, callback=lambda step, total: seen.append((step, total)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    other_ref = sampling.denoise(model, **dict(x, ref_img=x["ref_img"] + 1.0))
    assert not torch.allclose(out, other_ref)


@torch.no_grad()
def test_denoise_without_negative_has_no_guidance(model: Step1XEditDiT) -> None:
    x = dict(denoise_inputs(), negative=None)
    assert sampling.denoise(model, **x).shape == (2, 4, 64)
    with pytest.raises(ValueError, match="batch"):
        sampling.denoise(model, **dict(x, positive=conditioning(4, 6, 3)))


@torch.no_grad()
def test_single_step_is_one_euler_update(model: Step1XEditDiT) -> None:
    x = dict(denoise_inputs(), negative=None)
    x["schedule"] = sampling.Schedule([1.0, 0.25], [1.0])
    out = sampling.denoise(model, **x)
    t = torch.ones(2)
    text = x["positive"]
    velocity = model(
        torch.cat([x["img"], x["ref_img"]], dim=1),
        x["img_ids"],
        text.txt_ids,
        t,
        text.emb,
        t,
        text.mask,
    )[:, :4]
    torch.testing.assert_close(out, x["img"] - 0.75 * velocity)
    empty = sampling.Schedule([0.0], [])
    assert sampling.denoise(model, **dict(x, schedule=empty)) is x["img"]


@torch.no_grad()
def test_diffusers_step_tells_the_dit_its_1000_scale_time(model: Step1XEditDiT) -> None:
    x = dict(denoise_inputs(), negative=None)
    seen: list[torch.Tensor] = []

    def spy(**kwargs: torch.Tensor) -> torch.Tensor:
        seen.append(kwargs["timesteps"])
        return model(**kwargs)

    x["schedule"] = sampling.Schedule([0.7, 0.2], [700.0], model_scale=1000, upcast_step=True)
    sampling.denoise(spy, **x)  # type: ignore[arg-type]
    torch.testing.assert_close(seen[0], torch.full((2,), 700.0) / 1000, rtol=0, atol=0)
