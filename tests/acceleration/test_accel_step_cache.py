from __future__ import annotations

import torch

from stepedit.acceleration.config import StepCacheConfig
from stepedit.acceleration.step_cache import StepCachedDiT
from stepedit.sampling import denoise


def run(model: torch.nn.Module, inputs: object, *, batch_cfg: bool = True) -> torch.Tensor:
    x = inputs  # EditInputs
    with torch.no_grad():
        return denoise(
            model,  # type: ignore[arg-type]
            x.img,  # type: ignore[attr-defined]
            x.img_ids,  # type: ignore[attr-defined]
            x.ref_img,  # type: ignore[attr-defined]
            x.txt_ids,  # type: ignore[attr-defined]
            x.llm_embedding,  # type: ignore[attr-defined]
            x.mask,  # type: ignore[attr-defined]
            x.timesteps,  # type: ignore[attr-defined]
            4.0,
            batch_cfg=batch_cfg,
        )


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
    batched = StepCachedDiT(tiny_dit, StepCacheConfig(threshold=0.3), branches=1)
    sequential = StepCachedDiT(tiny_dit, StepCacheConfig(threshold=0.3), branches=2)
    out_batched = run(batched, inputs, batch_cfg=True)
    out_sequential = run(sequential, inputs, batch_cfg=False)
    # Per-branch decisions may differ from the joint one, but the step counts add up per branch.
    assert sequential.stats().total == 2 * 6
    assert batched.stats().total == 6
    exact = StepCachedDiT(tiny_dit, StepCacheConfig(threshold=0.0), branches=2)
    plain = run(tiny_dit, inputs)
    assert torch.allclose(run(exact, inputs, batch_cfg=False), plain, rtol=1e-4, atol=1e-4)
    assert out_batched.shape == out_sequential.shape


def test_a_new_edit_resets_the_cache(tiny_dit, make_inputs) -> None:
    cached = StepCachedDiT(tiny_dit, StepCacheConfig(threshold=10.0, warmup_steps=2))
    first = run(cached, make_inputs(3, steps=5))
    assert cached.stats().total == 5
    second = run(cached, make_inputs(3, steps=5))
    # Same inputs, fresh state: the same skips and the same result, not a residual from before.
    assert cached.stats().total == 5
    assert torch.equal(first, second)


def test_wrapping_leaves_the_dit_untouched(tiny_dit, make_inputs) -> None:
    keys = list(tiny_dit.state_dict())
    blocks = list(tiny_dit.double_blocks) + list(tiny_dit.single_blocks)
    cached = StepCachedDiT(tiny_dit, StepCacheConfig())
    run(cached, make_inputs(4, steps=3))
    assert list(tiny_dit.state_dict()) == keys
    assert list(tiny_dit.double_blocks) + list(tiny_dit.single_blocks) == blocks
    assert cached.config is tiny_dit.config
