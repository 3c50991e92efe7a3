"""LoRA adapters on the tiny model: both file formats, merged and unmerged, per request, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from stepedit.cli import main
from stepedit.errors import InvalidInput, WeightsError
from stepedit.model.dit import Step1XEditDiT
from stepedit.pipeline import EditPipeline
from stepedit.request import EditRequest, LoraChoice
from stepedit.weights import diffusers_layout as dl
from stepedit.weights.dummy import dummy_dit, parse_dummy
from stepedit.weights.lora import (
    METADATA_KEY,
    LoraSpec,
    apply_lora_file,
    diffusers_places,
    load_loras,
    official_targets,
    parse_lora_spec,
    read_lora,
)
from stepedit.weights.tensors import DictSource

MODEL = "dummy:tiny-v1.1"
STEPS = 2
LEVEL = 256


def tiny_dit() -> Step1XEditDiT:
    spec = parse_dummy(MODEL)
    return dummy_dit(spec.dit_config, device=torch.device("cpu"), dtype=torch.float32, seed=0)


def linears(dit: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    return {n: m for n, m in dit.named_modules() if isinstance(m, torch.nn.Linear)}


def official_file(
    path: Path, dit: Step1XEditDiT, *, rank: int = 4, alpha: float = 2.0, seed: int = 0
) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """Every Linear the official network adapts, random up and down; returns our module name ->
    (up, down, alpha / rank) for the hand merge."""
    generator = torch.Generator().manual_seed(seed)
    modules = linears(dit)
    tensors: dict[str, torch.Tensor] = {}
    expected = {}
    for lora_name, ours in official_targets(modules).items():
        linear = modules[ours]
        down = torch.randn(rank, linear.in_features, generator=generator) * 0.1
        up = torch.randn(linear.out_features, rank, generator=generator) * 0.1
        tensors[f"{lora_name}.lora_down.weight"] = down
        tensors[f"{lora_name}.lora_up.weight"] = up
        tensors[f"{lora_name}.alpha"] = torch.tensor(alpha)
        expected[ours] = (up, down, alpha / rank)
    save_file(tensors, path)
    return expected


DIFFUSERS_MODULES = (
    "transformer_blocks.0.attn.to_q",
    "transformer_blocks.0.attn.to_k",
    "transformer_blocks.0.attn.to_v",
    "transformer_blocks.0.attn.add_v_proj",
    "transformer_blocks.0.ff.net.0.proj",
    "transformer_blocks.0.norm1.linear",
    "single_transformer_blocks.0.attn.to_k",
    "single_transformer_blocks.0.proj_mlp",
    "single_transformer_blocks.0.proj_out",
    "norm_out.linear",
    "x_embedder",
)


def diffusers_file(
    path: Path,
    dit: Step1XEditDiT,
    *,
    rank: int = 4,
    alpha: float | None = None,
    metadata: dict[str, object] | None = None,
    seed: int = 1,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """LoRAs on diffusers modules (q/k/v split, single-block parts, the swapped final AdaLN);
    returns diffusers module -> (B, A)."""
    generator = torch.Generator().manual_seed(seed)
    diffusers_state = dl.dit_to_diffusers(DictSource(dit.state_dict()), dit.config)
    tensors: dict[str, torch.Tensor] = {}
    factors = {}
    for module in DIFFUSERS_MODULES:
        out, inp = diffusers_state.shape(f"{module}.weight")
        a = torch.randn(rank, inp, generator=generator) * 0.1
        b = torch.randn(out, rank, generator=generator) * 0.1
        tensors[f"transformer.{module}.lora_A.weight"] = a
        tensors[f"transformer.{module}.lora_B.weight"] = b
        if alpha is not None:
            tensors[f"transformer.{module}.alpha"] = torch.tensor(alpha)
        factors[module] = (b, a)
    header = {"format": "pt"}
    if metadata is not None:
        header[METADATA_KEY] = json.dumps(metadata)
    save_file(tensors, path, metadata=header)
    return factors


def hand_merged_official(
    dit: Step1XEditDiT, expected: dict[str, tuple[torch.Tensor, torch.Tensor, float]], scale: float
) -> dict[str, torch.Tensor]:
    state = {k: v.clone() for k, v in dit.state_dict().items()}
    for module, (up, down, ratio) in expected.items():
        state[f"{module}.weight"] = state[f"{module}.weight"] + scale * ratio * up @ down
    return state


def hand_merged_diffusers(
    dit: Step1XEditDiT, factors: dict[str, tuple[torch.Tensor, torch.Tensor]], ratio: float
) -> dict[str, torch.Tensor]:
    """W_diffusers + ratio * B @ A per diffusers module, converted back through the key table."""
    source = dl.dit_to_diffusers(DictSource(dit.state_dict()), dit.config)
    state = {k: source.get(k).clone() for k in source.names()}
    for module, (b, a) in factors.items():
        state[f"{module}.weight"] = state[f"{module}.weight"] + ratio * b @ a
    back = dl.dit_to_original(DictSource(state), dit.config)
    return {k: back.get(k) for k in back.names()}


def assert_state_close(dit: Step1XEditDiT, expected: dict[str, torch.Tensor]) -> None:
    state = dit.state_dict()
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=1e-6, msg=key)


# --- the two formats, merged into the DiT -------------------------------------------------------


def test_official_format_merges_as_w_plus_scale_alpha_over_rank_up_down(tmp_path: Path) -> None:
    dit = tiny_dit()
    expected = official_file(tmp_path / "hands.safetensors", dit, rank=4, alpha=2.0)
    want = hand_merged_official(dit, expected, scale=1.0)
    apply_lora_file(dit, tmp_path / "hands.safetensors")
    assert_state_close(dit, want)


def test_official_format_alpha_zero_means_rank(tmp_path: Path) -> None:
    dit = tiny_dit()
    expected = official_file(tmp_path / "a.safetensors", dit, rank=4, alpha=0.0)
    want = hand_merged_official(dit, {k: (u, d, 1.0) for k, (u, d, _) in expected.items()}, 0.5)
    apply_lora_file(dit, tmp_path / "a.safetensors", scale=0.5)
    assert_state_close(dit, want)


def test_diffusers_format_maps_split_qkv_and_swapped_halves(tmp_path: Path) -> None:
    dit = tiny_dit()
    factors = diffusers_file(tmp_path / "d.safetensors", dit, rank=4)  # no alpha: scale 1
    want = hand_merged_diffusers(dit, factors, ratio=1.0)
    adapter = read_lora(tmp_path / "d.safetensors", dit)
    # q, k and v land in one fused Linear as one change of rank 3 x 4.
    assert adapter.deltas["double_blocks.0.img_attn.qkv"].rank == 12
    assert adapter.format == "diffusers"
    apply_lora_file(dit, tmp_path / "d.safetensors")
    assert_state_close(dit, want)


def test_diffusers_alpha_keys_and_metadata_set_the_scale(tmp_path: Path) -> None:
    dit = tiny_dit()
    factors = diffusers_file(tmp_path / "alpha.safetensors", dit, rank=4, alpha=8.0)
    want = hand_merged_diffusers(dit, factors, ratio=8.0 / 4)
    apply_lora_file(dit, tmp_path / "alpha.safetensors")
    assert_state_close(dit, want)

    dit = tiny_dit()
    config = {"r": 4, "lora_alpha": 2, "rank_pattern": {}, "alpha_pattern": {}}
    factors = diffusers_file(tmp_path / "meta.safetensors", dit, rank=4, metadata=config)
    want = hand_merged_diffusers(dit, factors, ratio=2.0 / 4)
    apply_lora_file(dit, tmp_path / "meta.safetensors")
    assert_state_close(dit, want)

    dit = tiny_dit()
    config = {"r": 4, "lora_alpha": 4, "use_rslora": True}
    factors = diffusers_file(tmp_path / "rs.safetensors", dit, rank=4, metadata=config)
    want = hand_merged_diffusers(dit, factors, ratio=4.0 / math.sqrt(4))
    apply_lora_file(dit, tmp_path / "rs.safetensors")
    assert_state_close(dit, want)


def test_every_diffusers_linear_of_the_table_has_a_place() -> None:
    dit = tiny_dit()
    places = diffusers_places(dit)
    modules = linears(dit)
    # Every Linear of ours is reached from the diffusers side (the table is complete).
    assert {p.module for p in places.values() if p.module in modules} == set(modules)


# --- errors name the key ------------------------------------------------------------------------


def _save(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    save_file(tensors, path)
    return path


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        (
            {
                "lora_unet_double_blocks_7_img_attn_qkv.lora_down.weight": torch.zeros(2, 64),
                "lora_unet_double_blocks_7_img_attn_qkv.lora_up.weight": torch.zeros(192, 2),
            },
            "lora_unet_double_blocks_7_img_attn_qkv",
        ),
        (
            {
                "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.zeros(4, 64),
                "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.zeros(192, 2),
            },
            "'lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight' has rank 4",
        ),
        (
            {
                "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.zeros(2, 32),
                "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.zeros(192, 2),
            },
            "'lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight' is [192 x 32]",
        ),
        (
            {"lora_unet_double_blocks_0_img_attn_qkv.hada_w1_a": torch.zeros(2, 64)},
            "'lora_unet_double_blocks_0_img_attn_qkv.hada_w1_a'",
        ),
        (
            {"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(2, 8)},
            "text encoder",
        ),
        (
            {
                "transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(2, 64),
                "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(32, 2),
            },
            "'transformer_blocks.0.attn.to_q.lora_A.weight' is [32 x 64]",
        ),
        (
            {
                "transformer.transformer_blocks.0.attn.to_z.lora_A.weight": torch.zeros(2, 64),
                "transformer.transformer_blocks.0.attn.to_z.lora_B.weight": torch.zeros(64, 2),
            },
            "'transformer_blocks.0.attn.to_z'",
        ),
        (
            {
                "transformer.transformer_blocks.0.attn.norm_q.lora_A.weight": torch.zeros(2, 32),
                "transformer.transformer_blocks.0.attn.norm_q.lora_B.weight": torch.zeros(32, 2),
            },
            "'transformer_blocks.0.attn.norm_q'",
        ),
        ({"model.weight": torch.zeros(2)}, "not a LoRA file"),
    ],
)
def test_bad_files_raise_naming_the_key(
    tmp_path: Path, tensors: dict[str, torch.Tensor], message: str
) -> None:
    path = _save(tmp_path / "bad.safetensors", tensors)
    with pytest.raises(WeightsError, match=None) as error:
        read_lora(path, tiny_dit())
    assert message in str(error.value)


def test_metadata_rank_that_disagrees_with_the_weights_names_the_key(tmp_path: Path) -> None:
    dit = tiny_dit()
    diffusers_file(tmp_path / "m.safetensors", dit, rank=4, metadata={"r": 8, "lora_alpha": 8})
    with pytest.raises(WeightsError, match=r"lora_A.weight' has rank 4, the adapter's metadata"):
        read_lora(tmp_path / "m.safetensors", dit)


def test_only_safetensors_files_are_read(tmp_path: Path) -> None:
    path = tmp_path / "adapter.pt"
    torch.save({}, path)
    with pytest.raises(WeightsError, match=r"only \.safetensors"):
        read_lora(path, tiny_dit())


# --- the command-line spec ----------------------------------------------------------------------


def test_lora_specs(tmp_path: Path) -> None:
    file = tmp_path / "fix-hands.safetensors"
    file.write_bytes(b"")
    assert parse_lora_spec(str(file)) == LoraSpec(file, "fix-hands", 1.0)
    assert parse_lora_spec(f"{file}:0.7") == LoraSpec(file, "fix-hands", 0.7)
    assert parse_lora_spec(f"hands={file}:-0.5") == LoraSpec(file, "hands", -0.5)
    assert parse_lora_spec(f"hands={file}:0") == LoraSpec(file, "hands", 0.0)
    with pytest.raises(InvalidInput, match="no such file"):
        parse_lora_spec(str(tmp_path / "missing.safetensors"))
    with pytest.raises(InvalidInput, match="scale"):
        parse_lora_spec(f"{file}:9")
    spaced = tmp_path / "my lora.safetensors"
    spaced.write_bytes(b"")
    with pytest.raises(InvalidInput, match="NAME=PATH"):
        parse_lora_spec(str(spaced))


# --- in the pipeline: merged, unmerged, per request ---------------------------------------------


@pytest.fixture(scope="module")
def source() -> Image.Image:
    gradient = Image.linear_gradient("L").resize((96, 64))
    return Image.merge("RGB", (gradient, gradient.rotate(90).resize((96, 64)), gradient))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("loras")
    dit = EditPipeline.from_pretrained(MODEL, device="cpu").dit
    assert isinstance(dit, Step1XEditDiT)
    official_file(folder / "hands.safetensors", dit, rank=4, alpha=4.0, seed=5)
    diffusers_file(folder / "style.safetensors", dit, rank=2, seed=6)
    return {"hands": folder / "hands.safetensors", "style": folder / "style.safetensors"}


def latents(pipe: EditPipeline, image: Image.Image, **kwargs: object) -> torch.Tensor:
    request = EditRequest(
        prompt="add a red hat", num_inference_steps=STEPS, size_level=LEVEL, seed=7, **kwargs
    )  # type: ignore[arg-type]
    out = pipe(image, request)
    assert out.latents is not None
    return out.latents


def pipeline(files: dict[str, Path], *specs: tuple[str, float], fuse: bool = True) -> EditPipeline:
    pipe = EditPipeline.from_pretrained(MODEL, device="cpu")
    load_loras(pipe, [LoraSpec(files[name], name, scale) for name, scale in specs], fuse=fuse)
    return pipe


def test_merged_and_unmerged_runs_agree_and_differ_from_the_base(
    files: dict[str, Path], source: Image.Image
) -> None:
    base = latents(EditPipeline.from_pretrained(MODEL, device="cpu"), source)
    merged_pipe = pipeline(files, ("hands", 0.8), ("style", 1.0), fuse=True)
    assert all(info["merged"] for info in merged_pipe.loras.info())
    merged = latents(merged_pipe, source)
    unmerged_pipe = pipeline(files, ("hands", 0.8), ("style", 1.0), fuse=False)
    assert not any(info["merged"] for info in unmerged_pipe.loras.info())
    unmerged = latents(unmerged_pipe, source)
    torch.testing.assert_close(merged, unmerged, rtol=0, atol=1e-4)
    assert (merged - base).abs().max() > 1e-2


def test_requests_switch_adapters_without_reloading(
    files: dict[str, Path], source: Image.Image
) -> None:
    pipe = pipeline(files, ("hands", 1.0), ("style", 0.0))  # hands merged; style preloaded
    base = latents(EditPipeline.from_pretrained(MODEL, device="cpu"), source)
    only_style = latents(pipeline(files, ("style", 0.5)), source)
    half_hands = latents(pipeline(files, ("hands", 0.5)), source)
    default = latents(pipeline(files, ("hands", 1.0)), source)

    torch.testing.assert_close(latents(pipe, source, loras=()), base, rtol=0, atol=1e-4)
    got = latents(pipe, source, loras=(LoraChoice("style", 0.5),))
    torch.testing.assert_close(got, only_style, rtol=0, atol=1e-4)
    got = latents(pipe, source, loras=(LoraChoice("hands", 0.5),))
    torch.testing.assert_close(got, half_hands, rtol=0, atol=1e-4)
    # Back to the merged default: no path runs, the result is the merged model's, exactly.
    assert torch.equal(latents(pipe, source), default)


def test_unknown_adapter_is_an_invalid_input(files: dict[str, Path], source: Image.Image) -> None:
    pipe = pipeline(files, ("hands", 1.0))
    request = EditRequest(prompt="x", loras=(LoraChoice("nope", 1.0),))
    with pytest.raises(InvalidInput, match="'nope' not loaded") as error:
        pipe(source, request)
    assert error.value.param == "loras"


def test_registry_lists_what_the_api_shows(files: dict[str, Path]) -> None:
    pipe = pipeline(files, ("hands", 0.8), ("style", 0.0))
    info = {entry["name"]: entry for entry in pipe.loras.info()}
    assert info["hands"]["format"] == "official" and info["hands"]["rank"] == 4
    assert info["hands"]["targets"] == len(official_targets(linears(pipe.loras.dit)))
    assert info["hands"]["merged"] and not info["style"]["merged"]
    assert info["style"]["format"] == "diffusers" and info["style"]["rank"] == 6  # q, k, v
    assert pipe.loras.defaults() == (LoraChoice("hands", 0.8),)
    # Path factors are buffers that follow the module but stay out of the state dict.
    assert not any("lora" in key for key in pipe.loras.dit.state_dict())


# --- the command line ---------------------------------------------------------------------------


def test_cli_lora_end_to_end(files: dict[str, Path], tmp_path: Path) -> None:
    image = tmp_path / "in.png"
    Image.linear_gradient("L").resize((96, 64)).convert("RGB").save(image)
    common = ["--model", MODEL, "--size", "512", "--steps", "2", "--seed", "3", "--no-progress"]
    plain, adapted = tmp_path / "plain.png", tmp_path / "lora.png"
    assert main(["edit", str(image), "add a hat", "-o", str(plain), *common]) == 0
    lora = f"hands={files['hands']}:0.8"
    assert main(["edit", str(image), "add a hat", "-o", str(adapted), *common, "--lora", lora]) == 0
    pipe = pipeline(files, ("hands", 0.8))
    request = EditRequest(prompt="add a hat", num_inference_steps=2, size_level=512, seed=3)
    with Image.open(image) as source:
        expected = pipe(source.convert("RGB"), request).images[0]
    with Image.open(adapted) as got, Image.open(plain) as base:
        assert got.tobytes() == expected.tobytes()
        assert got.tobytes() != base.tobytes()


def test_cli_bad_lora_exits_2_before_loading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "in.png"
    Image.new("RGB", (64, 64)).save(image)
    args = ["edit", str(image), "x", "-o", str(tmp_path / "o.png"), "--model", MODEL]
    assert main([*args, "--lora", str(tmp_path / "missing.safetensors")]) == 2
    assert "no such file" in capsys.readouterr().err
