import pytest
import torch
import torch.nn.functional as F

from stepedit.model.attention import (
    attention,
    embed_positions,
    get_attention_backend,
    set_attention_backend,
)

AXES = (8, 12, 12)


def qkv(seed: int = 0, length: int = 10) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(2, 3, length, sum(AXES), generator=g) for _ in range(3))  # type: ignore[return-value]


def random_ids(length: int = 10) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    return torch.randint(0, 20, (2, length, 3), generator=g).float()


def test_zero_ids_are_the_identity_rotation() -> None:
    q, k, v = qkv()
    pe = embed_positions(torch.zeros(2, 10, 3), AXES, 10_000)
    assert pe.shape == (2, 1, 10, sum(AXES) // 2, 2, 2)
    expected = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 10, -1)
    torch.testing.assert_close(attention(q, k, v, pe), expected)


def test_rope_depends_only_on_relative_positions() -> None:
    q, k, v = qkv()
    ids = random_ids()
    out = attention(q, k, v, embed_positions(ids, AXES, 10_000))
    shifted = attention(q, k, v, embed_positions(ids + 7.0, AXES, 10_000))
    torch.testing.assert_close(out, shifted, atol=1e-5, rtol=1e-5)
    other = ids.clone()
    other[:, 0, 1] += 3.0
    assert not torch.allclose(out, attention(q, k, v, embed_positions(other, AXES, 10_000)))


def test_bf16_inputs_keep_their_dtype() -> None:
    q, k, v = (t.bfloat16() for t in qkv())
    out = attention(q, k, v, embed_positions(random_ids(), AXES, 10_000))
    assert out.dtype == torch.bfloat16


def test_backend_switch_defaults_to_sdpa_and_rejects_unknown() -> None:
    assert get_attention_backend() == "sdpa"
    with pytest.raises(ValueError):
        set_attention_backend("xformers")  # type: ignore[arg-type]
    set_attention_backend("sdpa")
    assert get_attention_backend() == "sdpa"


def test_missing_flash_package_is_a_clear_error() -> None:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="flash_attn"):
            set_attention_backend("flash")
        assert get_attention_backend() == "sdpa"
    else:
        pytest.skip("flash_attn is installed here")
