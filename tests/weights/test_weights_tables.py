"""The diffusers key tables: complete, strict, and exact inverses of each other."""

from __future__ import annotations

import pytest
import torch

from stepedit.errors import WeightsError
from stepedit.model.autoencoder import AutoEncoder
from stepedit.model.dit import Step1XEditDiT
from stepedit.model.presets import AE_PRESETS, DIT_PRESETS
from stepedit.weights import diffusers_layout as dl
from stepedit.weights.native import build_on_meta
from stepedit.weights.tensors import DictSource


@pytest.mark.parametrize("preset", sorted(DIT_PRESETS))
def test_dit_table_claims_every_model_key(preset: str) -> None:
    config = DIT_PRESETS[preset]
    model = build_on_meta(lambda: Step1XEditDiT(config))
    claimed = {m.original for m in dl.dit_key_maps(config)}
    if config.version == "v1.0":
        claimed.add(dl.SCALE_FACTOR_KEY)  # handled outside the table (fold / restore)
    assert claimed == set(model.state_dict())


@pytest.mark.parametrize("preset", sorted(AE_PRESETS))
def test_vae_table_claims_every_model_key(preset: str) -> None:
    config = AE_PRESETS[preset]
    model = build_on_meta(lambda: AutoEncoder(config))
    assert {m.original for m in dl.vae_key_maps(config)} == set(model.state_dict())


def test_full_size_dit_table_matches_the_published_diffusers_names() -> None:
    maps = dl.dit_key_maps(DIT_PRESETS["v1.1"])
    diffusers = {k for m in maps for k in m.diffusers}
    assert "transformer_blocks.18.attn.add_v_proj.bias" in diffusers
    assert "single_transformer_blocks.37.proj_mlp.weight" in diffusers
    assert "norm_out.linear.weight" in diffusers
    assert "connector.S.individual_token_refiner.blocks.1.mlp.fc2.bias" in diffusers
    assert "text_token_mapping.weight" not in diffusers
    assert "text_token_mapping.weight" in {
        k for m in dl.dit_key_maps(DIT_PRESETS["v1.2"]) for k in m.diffusers
    }


def _random_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        k: torch.randn(v.shape, generator=generator).to(torch.bfloat16)
        for k, v in model.state_dict().items()
    }


@pytest.mark.parametrize("preset", ["tiny-v1.1", "tiny-v1.2"])
def test_dit_round_trip_is_bit_identical(preset: str) -> None:
    config = DIT_PRESETS[preset]
    state = _random_state(build_on_meta(lambda: Step1XEditDiT(config)))
    diffusers = dl.dit_to_diffusers(DictSource(state), config)
    back = dl.dit_to_original(diffusers, config)
    assert set(back.names()) == set(state)
    for key in state:
        assert torch.equal(back.get(key), state[key]), key


def test_vae_round_trip_is_bit_identical() -> None:
    config = AE_PRESETS["tiny"]
    state = _random_state(build_on_meta(lambda: AutoEncoder(config)))
    maps = dl.vae_key_maps(config)
    back = dl.to_original(dl.to_diffusers(DictSource(state), maps, "VAE"), maps, "VAE")
    assert all(torch.equal(back.get(k), state[k]) for k in state)


def test_conversion_moves_the_numbers_where_diffusers_expects_them() -> None:
    config = DIT_PRESETS["tiny-v1.1"]
    state = _random_state(build_on_meta(lambda: Step1XEditDiT(config)))
    out = dl.dit_to_diffusers(DictSource(state), config)
    hidden = config.hidden_size
    qkv = state["double_blocks.0.txt_attn.qkv.weight"]
    assert torch.equal(
        out.get("transformer_blocks.0.attn.add_k_proj.weight"), qkv[hidden : 2 * hidden]
    )
    linear1 = state["single_blocks.0.linear1.bias"]
    assert torch.equal(out.get("single_transformer_blocks.0.proj_mlp.bias"), linear1[3 * hidden :])
    shift, scale = state["final_layer.adaLN_modulation.1.weight"].chunk(2)
    assert torch.equal(out.get("norm_out.linear.weight"), torch.cat([scale, shift]))

    ae_config = AE_PRESETS["tiny"]
    ae_state = _random_state(build_on_meta(lambda: AutoEncoder(ae_config)))
    vae = dl.to_diffusers(DictSource(ae_state), dl.vae_key_maps(ae_config), "VAE")
    assert vae.shape("decoder.mid_block.attentions.0.to_q.weight") == (64, 64)
    assert torch.equal(
        vae.get("decoder.up_blocks.0.resnets.0.conv1.weight"),
        ae_state["decoder.up.3.block.0.conv1.weight"],
    )


def test_leftover_and_absent_keys_are_named() -> None:
    config = DIT_PRESETS["tiny-v1.1"]
    state = _random_state(build_on_meta(lambda: Step1XEditDiT(config)))
    state["lora_up.weight"] = torch.zeros(1)
    del state["img_in.bias"]
    with pytest.raises(WeightsError, match=r"missing key\(s\): 'img_in\.bias'.*'lora_up\.weight'"):
        dl.dit_to_diffusers(DictSource(state), config)


def test_split_with_wrong_size_is_refused_before_reading() -> None:
    config = DIT_PRESETS["tiny-v1.1"]
    state = _random_state(build_on_meta(lambda: Step1XEditDiT(config)))
    state["double_blocks.0.img_attn.qkv.weight"] = torch.zeros(10, config.hidden_size)
    with pytest.raises(WeightsError, match=r"img_attn\.qkv\.weight.*should split"):
        dl.dit_to_diffusers(DictSource(state), config)


def test_v10_needs_an_explicit_fold_and_the_fold_keeps_the_function() -> None:
    config = DIT_PRESETS["tiny-v1.0"]
    state = _random_state(build_on_meta(lambda: Step1XEditDiT(config)))
    state = {k: v.float() for k, v in state.items()}
    state[dl.SCALE_FACTOR_KEY] = torch.tensor([-0.91])
    with pytest.raises(WeightsError, match="fold"):
        dl.dit_to_diffusers(DictSource(state), config)
    folded = dl.dit_to_diffusers(DictSource(state), config, fold_scale_factor=True)
    back = dl.dit_to_original(folded, config)
    assert torch.equal(back.get(dl.SCALE_FACTOR_KEY), torch.zeros(1))
    x = torch.randn(3, config.connector_in_channels)
    weight = state[dl.GLOBAL_PROJ_WEIGHT]
    expected = (x * (1 - 0.91)) @ weight.T
    got = x @ back.get(dl.GLOBAL_PROJ_WEIGHT).T
    torch.testing.assert_close(got, expected)


def test_configs_round_trip() -> None:
    for preset in ("v1.0", "v1.1", "v1.2", "tiny-v1.2"):
        config = DIT_PRESETS[preset]
        data = dl.dit_config_to_diffusers(config)
        assert dl.dit_config_from_diffusers(data, config.version) == config
    assert dl.dit_config_to_diffusers(DIT_PRESETS["v1.1"])["num_single_layers"] == 38
    for ae in AE_PRESETS.values():
        assert dl.vae_config_from_diffusers(dl.vae_config_to_diffusers(ae)) == ae
    assert dl.vae_config_to_diffusers(AE_PRESETS["flux"])["block_out_channels"] == [
        128,
        256,
        512,
        512,
    ]
