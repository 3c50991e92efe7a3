import itertools
import math

import pytest
import torch

from stepedit import sampling
from stepedit.model import DIT_PRESETS, Step1XEditDiT, init_random_weights


def test_schedule_endpoints_and_length() -> None:
    ts = sampling.get_schedule(28, 4096)
    assert len(ts) == 29
    assert ts[0] == pytest.approx(1.0) and ts[-1] == 0.0
    assert all(a > b for a, b in itertools.pairwise(ts))


def test_schedule_values_hand_computed() -> None:
    # 256 tokens -> mu = base_shift = 0.5; t' = e^mu / (e^mu + 1/t - 1).
    ts = sampling.get_schedule(4, 256)
    expected = [1.0, 0.8318243, 0.6224593, 0.3546612, 0.0]
    assert ts == pytest.approx(expected, abs=1e-6)
    # 4096 tokens -> mu = max_shift = 1.15; at t = 0.5 that is sigmoid(1.15).
    assert sampling.get_schedule(2, 4096)[1] == pytest.approx(0.7595109, abs=1e-6)
    # 1024 tokens -> mu = 0.5 + 0.65 * (1024 - 256) / 3840 = 0.63.
    assert sampling.get_schedule(2, 1024)[1] == pytest.approx(1 / (1 + math.exp(-0.63)), abs=1e-6)


def test_schedule_without_shift_is_linear() -> None:
    assert sampling.get_schedule(4, 4096, shift=False) == pytest.approx([1, 0.75, 0.5, 0.25, 0])


def test_larger_images_spend_more_steps_at_high_noise() -> None:
    small, large = sampling.get_schedule(10, 256), sampling.get_schedule(10, 4096)
    assert all(big >= s for big, s in zip(large, small, strict=True))


def test_pack_unpack_round_trip_and_patch_layout() -> None:
    latents = torch.randn(2, 16, 6, 8)
    tokens = sampling.pack(latents)
    assert tokens.shape == (2, 12, 64)
    # token 0 = the top-left 2x2 patch, channel-major: (c, ph, pw).
    torch.testing.assert_close(tokens[0, 0], latents[0, :, :2, :2].reshape(-1))
    torch.testing.assert_close(sampling.unpack(tokens, 48, 64), latents)


@pytest.mark.parametrize(("version", "index"), [("v1.0", 0), ("v1.1", 1), ("v1.2", 1)])
def test_prepare_ids_reference_index(version: str, index: int) -> None:
    img_ids, txt_ids = sampling.prepare_ids(3, 4, 6, 7, version)  # type: ignore[arg-type]
    assert img_ids.shape == (3, 12, 3) and txt_ids.shape == (3, 7, 3)
    noisy, ref = img_ids[:, :6], img_ids[:, 6:]
    assert (noisy[..., 0] == 0).all() and (ref[..., 0] == index).all()
    # (row, col) of the packed 2x3 token grid, row-major; the reference half is offset by its
    # index on every axis, as the official code builds it (ones + arange for v1.1).
    rows_cols = torch.tensor([[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]).float()
    torch.testing.assert_close(noisy[0, :, 1:], rows_cols)
    torch.testing.assert_close(ref[0, :, 1:], rows_cols + index)
    assert (txt_ids == 0).all()


def test_strength_zero_keeps_start_latents_and_one_is_pure_noise() -> None:
    noise, init = torch.randn(1, 12, 64), torch.randn(1, 12, 64)
    ts = sampling.get_schedule(10, 12)
    x, rest = sampling.noise_for_strength(noise, init, ts, 0.0)
    torch.testing.assert_close(x, init, rtol=0, atol=0)
    assert rest == [0.0]
    x, rest = sampling.noise_for_strength(noise, init, ts, 1.0)
    torch.testing.assert_close(x, noise, rtol=0, atol=0)
    assert rest == ts


def test_partial_strength_blends_at_the_start_time() -> None:
    noise, init = torch.randn(1, 12, 64), torch.randn(1, 12, 64)
    ts = sampling.get_schedule(10, 12)
    x, rest = sampling.noise_for_strength(noise, init, ts, 0.6)
    t = ts[4]  # int((1 - 0.6) * 10) = 4
    assert rest == ts[4:]
    torch.testing.assert_close(x, t * noise + (1 - t) * init)
    with pytest.raises(ValueError):
        sampling.noise_for_strength(noise, init, ts, 1.5)


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


def denoise_inputs(batch: int = 2) -> dict:
    g = torch.Generator().manual_seed(2)
    img_ids, txt_ids = sampling.prepare_ids(batch, 4, 4, 6, "v1.1")
    mask = torch.ones(2 * batch, 6, dtype=torch.long)
    mask[-1, 2:] = 0
    return {
        "img": torch.randn(batch, 4, 64, generator=g),
        "img_ids": img_ids,
        "ref_img": torch.randn(batch, 4, 64, generator=g),
        "txt_ids": torch.cat([txt_ids, txt_ids]),
        "llm_embedding": torch.randn(2 * batch, 6, 64, generator=g) * 3,
        "mask": mask,
        "timesteps": sampling.get_schedule(4, 4),
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
def test_denoise_reports_each_step_and_uses_the_reference(model: Step1XEditDiT) -> None:
    x = denoise_inputs()
    seen: list[tuple[int, int]] = []
    out = sampling.denoise(model, **x, callback=lambda step, total: seen.append((step, total)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    other_ref = sampling.denoise(model, **dict(x, ref_img=x["ref_img"] + 1.0))
    assert not torch.allclose(out, other_ref)


@torch.no_grad()
def test_denoise_without_guidance_takes_batch_b_text(model: Step1XEditDiT) -> None:
    x = denoise_inputs()
    x.update(
        guidance_scale=None,
        txt_ids=x["txt_ids"][:2],
        llm_embedding=x["llm_embedding"][:2],
        mask=x["mask"][:2],
    )
    assert sampling.denoise(model, **x).shape == (2, 4, 64)
    with pytest.raises(ValueError, match="text batch"):
        sampling.denoise(model, **dict(x, guidance_scale=6.0))


@torch.no_grad()
def test_single_step_is_one_euler_update(model: Step1XEditDiT) -> None:
    x = denoise_inputs()
    x.update(timesteps=[1.0, 0.25], guidance_scale=None)
    x.update({k: x[k][:2] for k in ("txt_ids", "llm_embedding", "mask")})
    out = sampling.denoise(model, **x)
    t = torch.ones(2)
    velocity = model(
        torch.cat([x["img"], x["ref_img"]], dim=1),
        x["img_ids"],
        x["txt_ids"],
        t,
        x["llm_embedding"],
        t,
        x["mask"],
    )[:, :4]
    torch.testing.assert_close(out, x["img"] - 0.75 * velocity)
    assert sampling.denoise(model, **dict(x, timesteps=[0.0])) is x["img"]
