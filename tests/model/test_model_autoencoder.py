import pytest
import torch

from seeded import init_random_weights
from stepedit.model import AE_PRESETS, AutoEncoder


@pytest.fixture(scope="module")
def ae() -> AutoEncoder:
    model = AutoEncoder(AE_PRESETS["tiny"])
    init_random_weights(model, torch.Generator().manual_seed(0))
    return model.eval()


def image(h: int = 64, w: int = 48) -> torch.Tensor:
    return torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(1)) * 2 - 1


@torch.no_grad()
def test_encode_downsamples_by_8_to_16_channels(ae: AutoEncoder) -> None:
    z = ae.encode(image(), sample=False)
    assert z.shape == (2, 16, 8, 6)
    assert ae.decode(z).shape == (2, 3, 64, 48)


@torch.no_grad()
def test_encode_mean_is_deterministic_and_sampling_follows_the_generator(ae: AutoEncoder) -> None:
    x = image()
    torch.testing.assert_close(ae.encode(x, sample=False), ae.encode(x, sample=False))
    a = ae.encode(x, generator=torch.Generator().manual_seed(3))
    b = ae.encode(x, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, ae.encode(x, sample=False))


@torch.no_grad()
def test_scale_and_shift_are_applied_and_inverted(ae: AutoEncoder) -> None:
    x = image()
    raw_mean = ae.encoder(x).chunk(2, dim=1)[0]
    z = ae.encode(x, sample=False)
    torch.testing.assert_close(z, 0.3611 * (raw_mean - 0.1159))
    torch.testing.assert_close(ae.decode(z), ae.decoder(raw_mean), atol=1e-5, rtol=1e-5)


def test_flux_key_names_on_meta() -> None:
    with torch.device("meta"):
        model = AutoEncoder(AE_PRESETS["flux"])
    keys = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(keys) == 244  # tensor count of FLUX ae.safetensors
    assert keys["encoder.conv_in.weight"] == (128, 3, 3, 3)
    assert keys["encoder.down.1.block.0.nin_shortcut.weight"] == (256, 128, 1, 1)
    assert keys["encoder.down.2.downsample.conv.weight"] == (512, 512, 3, 3)
    assert "encoder.down.3.downsample.conv.weight" not in keys
    assert keys["encoder.mid.attn_1.q.weight"] == (512, 512, 1, 1)
    assert keys["encoder.conv_out.weight"] == (32, 512, 3, 3)
    assert keys["decoder.conv_in.weight"] == (512, 16, 3, 3)
    assert keys["decoder.up.0.block.2.conv2.weight"] == (128, 128, 3, 3)
    assert keys["decoder.up.1.upsample.conv.weight"] == (256, 256, 3, 3)
    assert "decoder.up.0.upsample.conv.weight" not in keys
    assert keys["decoder.norm_out.weight"] == (128,)


def test_meta_then_assign_load(ae: AutoEncoder) -> None:
    with torch.device("meta"):
        model = AutoEncoder(AE_PRESETS["tiny"])
    model.load_state_dict(ae.state_dict(), strict=True, assign=True)
    x = image(32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.encode(x, sample=False), ae.encode(x, sample=False))


@torch.no_grad()
def test_decode_tiled_equals_decode_when_one_tile_fits(ae: AutoEncoder) -> None:
    z = torch.randn(1, 16, 8, 6, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(ae.decode_tiled(z, tile=8, overlap=2), ae.decode(z))


@torch.no_grad()
def test_decode_tiled_covers_large_latents(ae: AutoEncoder) -> None:
    z = torch.randn(1, 16, 20, 13, generator=torch.Generator().manual_seed(4))
    tiled = ae.decode_tiled(z, tile=8, overlap=2)
    full = ae.decode(z)
    assert tiled.shape == full.shape == (1, 3, 160, 104)
    assert torch.isfinite(tiled).all()
    # Seams blend towards the full decode rather than away from it.
    assert (tiled - full).abs().mean() < full.abs().mean()
    with pytest.raises(ValueError):
        ae.decode_tiled(z, tile=8, overlap=8)


def test_decode_tiled_stitches_a_pointwise_decoder_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    model = AutoEncoder(AE_PRESETS["tiny"])

    def pointwise(z: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(z[:, :3], scale_factor=8.0, mode="nearest")

    monkeypatch.setattr(model, "decode", pointwise)
    z = torch.randn(2, 16, 21, 11)
    torch.testing.assert_close(model.decode_tiled(z, tile=6, overlap=2), pointwise(z))


def test_diffusers_arithmetic_is_the_same_function() -> None:
    """diffusers' AutoencoderKL computes the swish with the silu kernel and the attention block
    on tokens with Linear projections: the same function, other float rounding (the parity
    harness checks each against its reference to the last bit)."""
    model = AutoEncoder(AE_PRESETS["tiny"])
    init_random_weights(model, torch.Generator().manual_seed(0))
    model.eval()
    x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(1)) * 2 - 1
    z = torch.randn(1, 16, 8, 12, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        flux = model.encoder(x), model.decode(z)
        model.use_diffusers_arithmetic(True)
        diffusers = model.encoder(x), model.decode(z)
    keys = list(model.state_dict())
    model.use_diffusers_arithmetic(False)
    assert list(model.state_dict()) == keys  # no parameter added or renamed
    for a, b in zip(flux, diffusers, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
