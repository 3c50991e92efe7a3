import pytest
import torch

from seeded import init_random_weights
from stepedit.model import DIT_PRESETS, Step1XEditDiT
from stepedit.model.layers import timestep_embedding
from stepedit.request import VERSIONS
from stepedit.sampling import prepare_image_ids

B, H, W, L_TXT = 2, 4, 6, 5  # latent 4x6 -> 6 noisy + 6 reference tokens


def tiny(version: str, seed: int = 0) -> Step1XEditDiT:
    model = Step1XEditDiT(DIT_PRESETS[f"tiny-{version}"])
    init_random_weights(model, torch.Generator().manual_seed(seed))
    return model.eval()


def inputs(version: str, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    width = DIT_PRESETS[f"tiny-{version}"].connector_in_channels
    img_ids = prepare_image_ids(B, H, W, VERSIONS[version].reference_positions)  # type: ignore[index]
    txt_ids = torch.zeros(B, L_TXT, 3)
    mask = torch.ones(B, L_TXT, dtype=torch.long)
    mask[1, 3:] = 0
    t = torch.tensor([0.9, 0.4])
    out = {
        "img": torch.randn(B, img_ids.shape[1], 64, generator=g),
        "img_ids": img_ids,
        "txt_ids": txt_ids,
        "timesteps": t,
        "llm_embedding": torch.randn(B, L_TXT, width, generator=g),
        "t_vec": t,
        "mask": mask,
    }
    if version == "v1.2":
        out["text_embeddings"] = torch.randn(B, L_TXT, width, generator=g)
        out["text_mask"] = mask
    return out


@pytest.mark.parametrize("version", ["v1.0", "v1.1", "v1.2"])
def test_forward_shape_and_finite(version: str) -> None:
    x = inputs(version)
    with torch.no_grad():
        out = tiny(version)(**x)
    assert out.shape == x["img"].shape
    assert torch.isfinite(out).all()


def test_same_seed_same_weights_different_seed_different() -> None:
    a, b, c = tiny("v1.1", 7), tiny("v1.1", 7), tiny("v1.1", 8)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert not torch.equal(a.img_in.weight, c.img_in.weight)


@pytest.mark.parametrize("version", ["v1.0", "v1.1", "v1.2"])
def test_meta_construction_then_assign_load_reproduces_outputs(version: str) -> None:
    source = tiny(version)
    with torch.device("meta"):
        model = Step1XEditDiT(DIT_PRESETS[f"tiny-{version}"])
    assert all(p.is_meta for p in model.parameters())
    model.load_state_dict(source.state_dict(), strict=True, assign=True)
    x = inputs(version)
    with torch.no_grad():
        torch.testing.assert_close(model(**x), source(**x), rtol=0, atol=0)


def test_meta_materialise_then_random_init() -> None:
    with torch.device("meta"):
        model = Step1XEditDiT(DIT_PRESETS["tiny-v1.0"])
    model.to_empty(device="cpu")
    init_random_weights(model, torch.Generator().manual_seed(0))
    assert model.connector.scale_factor is not None
    assert model.connector.scale_factor.item() == pytest.approx(-0.91)
    torch.testing.assert_close(model.state_dict()["img_in.weight"], tiny("v1.0").img_in.weight)


def full_keys(version: str) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = Step1XEditDiT(DIT_PRESETS[version])
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# Names and shapes as they appear in the released original-layout checkpoints.
COMMON_KEYS = {
    "img_in.weight": (3072, 64),
    "time_in.in_layer.weight": (3072, 256),
    "time_in.out_layer.bias": (3072,),
    "vector_in.in_layer.weight": (3072, 768),
    "txt_in.weight": (3072, 4096),
    "double_blocks.0.img_mod.lin.weight": (18432, 3072),
    "double_blocks.0.img_attn.qkv.weight": (9216, 3072),
    "double_blocks.0.img_attn.qkv.bias": (9216,),
    "double_blocks.0.img_attn.norm.query_norm.scale": (128,),
    "double_blocks.0.img_attn.norm.key_norm.scale": (128,),
    "double_blocks.0.img_attn.proj.weight": (3072, 3072),
    "double_blocks.0.img_mlp.0.weight": (12288, 3072),
    "double_blocks.0.img_mlp.2.weight": (3072, 12288),
    "double_blocks.18.txt_mod.lin.bias": (18432,),
    "double_blocks.18.txt_attn.qkv.weight": (9216, 3072),
    "double_blocks.18.txt_mlp.2.bias": (3072,),
    "single_blocks.0.linear1.weight": (21504, 3072),
    "single_blocks.37.linear2.weight": (3072, 15360),
    "single_blocks.37.norm.query_norm.scale": (128,),
    "single_blocks.37.norm.key_norm.scale": (128,),
    "single_blocks.37.modulation.lin.weight": (9216, 3072),
    "final_layer.linear.weight": (64, 3072),
    "final_layer.adaLN_modulation.1.weight": (6144, 3072),
    "connector.S.input_embedder.weight": (4096, 3584),
    "connector.S.t_embedder.mlp.0.weight": (4096, 256),
    "connector.S.t_embedder.mlp.2.weight": (4096, 4096),
    "connector.S.c_embedder.linear_1.weight": (4096, 3584),
    "connector.S.c_embedder.linear_2.weight": (4096, 4096),
    "connector.S.individual_token_refiner.blocks.1.norm1.weight": (4096,),
    "connector.S.individual_token_refiner.blocks.1.self_attn_qkv.weight": (12288, 4096),
    "connector.S.individual_token_refiner.blocks.1.self_attn_proj.weight": (4096, 4096),
    "connector.S.individual_token_refiner.blocks.1.norm2.bias": (4096,),
    "connector.S.individual_token_refiner.blocks.1.mlp.fc1.weight": (16384, 4096),
    "connector.S.individual_token_refiner.blocks.1.mlp.fc2.weight": (4096, 16384),
    "connector.S.individual_token_refiner.blocks.1.adaLN_modulation.1.weight": (8192, 4096),
    "connector.global_proj_out.weight": (768, 3584),
}
# 19 double blocks x 24 + 38 single x 8 + embedders/final 16 + connector 40 tensors = 816,
# the tensor count of the v1.1 original-layout checkpoint.
V11_KEY_COUNT = 19 * 24 + 38 * 8 + 16 + 40


@pytest.mark.parametrize("version", ["v1.0", "v1.1", "v1.2"])
def test_full_size_key_names_match_original_checkpoint(version: str) -> None:
    keys = full_keys(version)
    for name, shape in COMMON_KEYS.items():
        assert keys.get(name) == shape, name
    assert not any(
        k.startswith("double_blocks.19") or k.startswith("single_blocks.38") for k in keys
    )
    assert not any("self_attn_q_norm" in k or "pe_embedder" in k for k in keys)

    extra = {
        "v1.0": {"connector.scale_factor": (1,)},
        "v1.1": {},
        "v1.2": {"text_token_mapping.weight": (4096, 3584), "text_token_mapping.bias": (4096,)},
    }[version]
    for name, shape in extra.items():
        assert keys[name] == shape
    assert ("connector.scale_factor" in keys) == (version == "v1.0")
    assert ("text_token_mapping.weight" in keys) == (version == "v1.2")
    assert len(keys) == V11_KEY_COUNT + len(extra)


def test_v1_0_scale_factor_scales_the_pooled_vector() -> None:
    model = tiny("v1.0")
    x = inputs("v1.0")
    with torch.no_grad():
        _, y = model.connector(x["llm_embedding"], x["t_vec"], x["mask"])
        assert model.connector.scale_factor is not None
        model.connector.scale_factor.zero_()
        _, y_unscaled = model.connector(x["llm_embedding"], x["t_vec"], x["mask"])
        bias = model.connector.global_proj_out.bias
        torch.testing.assert_close(y - bias, (y_unscaled - bias) * 0.09, atol=1e-6, rtol=1e-5)


def test_pooled_vector_ignores_padded_tokens() -> None:
    model = tiny("v1.1")
    x = inputs("v1.1")
    changed = x["llm_embedding"].clone()
    changed[1, 3:] += 100.0  # only padding (mask 0) positions of row 1
    with torch.no_grad():
        _, y = model.connector(x["llm_embedding"], x["t_vec"], x["mask"])
        _, y_changed = model.connector(changed, x["t_vec"], x["mask"])
    torch.testing.assert_close(y, y_changed)


def test_v1_2_adds_masked_text_token_mapping() -> None:
    model = tiny("v1.2")
    x = inputs("v1.2")
    silent = dict(x, text_mask=torch.zeros_like(x["mask"]))
    with torch.no_grad():
        with_mapping = model(**x)
        without = model(**silent)
        assert model.text_token_mapping is not None
        model.text_token_mapping.weight.zero_()
        model.text_token_mapping.bias.zero_()
        zeroed = model(**x)
    torch.testing.assert_close(without, zeroed)
    assert not torch.allclose(with_mapping, without)


def test_v1_2_requires_text_embeddings_and_v1_1_refuses_them() -> None:
    x12 = inputs("v1.2")
    del x12["text_embeddings"], x12["text_mask"]
    with pytest.raises(ValueError, match="text_embeddings"):
        tiny("v1.2")(**x12)
    x11 = inputs("v1.1")
    with pytest.raises(ValueError, match="text_embeddings"):
        tiny("v1.1")(**x11, text_embeddings=x11["llm_embedding"], text_mask=x11["mask"])


def test_output_depends_on_the_reference_rope_index() -> None:
    # v1.0 and v1.1 differ only in the RoPE index of the reference tokens; the model must see it.
    model = tiny("v1.1")
    x = inputs("v1.1")
    ids0 = x["img_ids"].clone()
    ids0[:, :, 0] = 0
    with torch.no_grad():
        assert not torch.allclose(model(**x), model(**dict(x, img_ids=ids0)))


def test_timestep_embedding_is_cos_first_and_scaled_by_1000() -> None:
    emb = timestep_embedding(torch.tensor([0.0, 0.001]), 256)
    assert emb.shape == (2, 256)
    torch.testing.assert_close(emb[0, :128], torch.ones(128))
    torch.testing.assert_close(emb[0, 128:], torch.zeros(128))
    # t = 0.001 -> argument 1.0 at the first (highest) frequency.
    assert emb[1, 0].item() == pytest.approx(torch.cos(torch.tensor(1.0)).item(), abs=1e-6)
