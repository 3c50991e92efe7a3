from __future__ import annotations

import dataclasses

import torch
from accel_tiny_edit import EditInputs

from stepedit.acceleration.config import StepCacheConfig
from stepedit.acceleration.step_cache import StepCachedDiT


def run(model: torch.nn.Module, inputs: EditInputs, *, batch_cfg: bool = True) -> torch.Tensor:
    return inputs.denoise(model, batch_cfg=batch_cfg)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float((a - b).pow(2).mean())
    peak = float(b.abs().max())
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(peak**2 / mse)).item()


def test_threshold_zero_is_exactly_the_plain_path(tiny_dit, make_inputs) -> None:
    inputs = make_inputs(0, steps=8)
    plain = run(tiny_dit, inputs)
    cached = StepCachedDiT(tiny_dit, StepCacheConfig(threshold=0.0, warmup_steps=1))
    assert torch.equal(run(cached, inputs), plain)
    assert cached.stats().skipped == 0
    assert cached.stats().computed == 8


def test_high_threshold_skips_steps_and_reports_deviation(tiny_dit, make_inputs) -> None:
    inputs = make_inputs(1, steps=12)
    plain = run(tiny_dit, inputs)
    config = StepCacheConfig(threshold=1.5, warmup_steps=2, max_consecutive_skips=2)
    cached = StepCachedDiT(tiny_dit, config)
    approx = run(cached, inputs)
    stats = cached.stats()
    deviation = float((approx - plain).abs().max())
    print(
        f"step cache: skipped {stats.skipped}/{stats.total}, max|diff| {deviation:.4g}, "
        f"PSNR {psnr(approx, plain):.1f} dB"
    )
    assert stats.total == 12
    assert stats.skipped > 0
    # Warm-up steps run, and never more than 2 skips in a row: at most 2 of every 3 after it.
    assert stats.skipped <= (12 - 2) * 2 // 3 + 1
    assert 0 < deviation < float(plain.abs().max())


def test_two_forward_cfg_keeps_one_cache_per_branch(tiny_dit, make_inputs) -> None:
    inputs = make_inputs(2, steps=6)
    batched = StepCachedDiT(tiny_dit, StepCacheConfig(threshold=0.3))
    sequential = StepCachedDiT(tiny_dit, StepCacheConfig(threshold=0.3))
    out_batched = run(batched, inputs, batch_cfg=True)
    out_sequential = run(sequential, inputs, batch_cfg=False)
    # Per-branch decisions may differ from the joint one, but the step counts add up per branch.
    assert sequential.stats().total == 2 * 6
    assert batched.stats().total == 6
    exact = StepCachedDiT(tiny_dit, StepCacheConfig(threshold=0.0))
    plain = run(tiny_dit, inputs)
    assert torch.allclose(run(exact, inputs, batch_cfg=False), plain, rtol=1e-4, atol=1e-4)
    assert out_batched.shape == out_sequential.shape


def test_unpadded_prompts_of_different_lengths_are_cached_per_branch(tiny_dit, make_inputs) -> None:
    # v1.2: the positive and the negative prompt have their own lengths, so the sampler runs
    # two forwards per step even with batched CFG; each branch still skips on its own.
    inputs = make_inputs(5, steps=10)
    short = inputs.negative
    negative = type(short)(short.emb[:, :5], short.mask[:, :5], short.txt_ids[:, :5])
    v12_like = dataclasses.replace(inputs, negative=negative)
    cached = StepCachedDiT(tiny_dit, StepCacheConfig(threshold=1.5, warmup_steps=2))
    run(cached, v12_like)
    assert cached.stats().total == 2 * 10
    assert cached.stats().skipped > 0


def test_a_new_edit_resets_the_cache(tiny_dit, make_inputs) -> None:
    cached = StepCachedDiT(tiny_dit, StepCacheConfig(threshold=10.0, warmup_steps=2))
    first = run(cached, make_inputs(3, steps=5))
    first_stats = cached.stats()
    assert first_stats.total == 5 and first_stats.skipped > 0
    second = run(cached, make_inputs(3, steps=5))
    # Same inputs, fresh state: the same skips and the same result, not a residual from before.
    # The counts add up until an explicit reset (a reasoning request's rounds are one edit each).
    assert cached.stats().skipped == 2 * first_stats.skipped
    assert torch.equal(first, second)
    cached.reset()
    assert cached.stats().total == 0


def test_wrapping_leaves_the_dit_untouched(tiny_dit, make_inputs) -> None:
    keys = list(tiny_dit.state_dict())
    blocks = list(tiny_dit.double_blocks) + list(tiny_dit.single_blocks)
    cached = StepCachedDiT(tiny_dit, StepCacheConfig())
    run(cached, make_inputs(4, steps=3))
    assert list(tiny_dit.state_dict()) == keys
    assert list(tiny_dit.double_blocks) + list(tiny_dit.single_blocks) == blocks
    assert cached.config is tiny_dit.config
