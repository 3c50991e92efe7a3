"""GGUF DiT files as city96's ComfyUI-GGUF tools write them, on the tiny model.

The files are written here with the `gguf` package's own writer and quantizer, following the
converter's conventions (architecture "flux", the original key names, F32 for 1-D and small
tensors and the sensitive in/out projections, F16 for the other embedders, the file's quant
type for the rest)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.weights.conftest import run_dit

from stepedit.errors import WeightsError
from stepedit.weights import Components, load_components
from stepedit.weights.formats import QWEN_FOLDER_NAME
from stepedit.weights.gguf import GGUFSource

gguf = pytest.importorskip("gguf")
T = gguf.GGMLQuantizationType

KEEP_F32 = ("img_in.", "time_in.in_layer.", "vector_in.in_layer.", "final_layer.linear.")
KEEP_F16 = ("txt_in.", "time_in.", "vector_in.", "final_layer.")


def city96_type(key: str, array: np.ndarray, qtype: object) -> object:
    if array.ndim == 1 or array.size <= 1024 or any(k in key for k in KEEP_F32):
        return T.F32
    if any(k in key for k in KEEP_F16):
        return T.F16
    return qtype


def write_gguf(
    path: Path,
    state: dict[str, torch.Tensor],
    qtype: object,
    *,
    orig_shape: dict[str, tuple[int, ...]] | None = None,
) -> dict[str, np.ndarray]:
    """Write `state` as a GGUF DiT; return what each tensor reads back as (float32)."""
    writer = gguf.GGUFWriter(str(path), arch="flux")
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    expected = {}
    for key, tensor in state.items():
        array = tensor.float().numpy()
        kind = city96_type(key, array, qtype)
        if orig_shape and key in orig_shape:
            array = array.reshape(-1, 32)
            writer.add_array(f"comfy.gguf.orig_shape.{key}", list(orig_shape[key]))
        data = gguf.quants.quantize(array, kind)
        writer.add_tensor(key, data, raw_dtype=kind)
        expected[key] = gguf.quants.dequantize(data, kind).reshape(tensor.shape)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return expected


def gguf_checkpoint(folder: Path, original_dir: Path, tiny: Components, qtype: object) -> Path:
    """A folder holding the GGUF DiT and the VAE, as a user downloads them."""
    folder.mkdir(parents=True, exist_ok=True)
    os.link(original_dir / "vae.safetensors", folder / "vae.safetensors")
    path = folder / f"step1x-edit-v1p1-{qtype.name}.gguf"  # type: ignore[attr-defined]
    write_gguf(path, tiny.dit.state_dict(), qtype)
    return path


@pytest.mark.parametrize("qtype", [T.Q8_0, T.Q5_1, T.Q4_0, T.BF16, T.F16])
def test_gguf_source_dequantizes_each_type(tmp_path: Path, tiny: Components, qtype: object) -> None:
    path = tmp_path / "dit.gguf"
    expected = write_gguf(path, tiny.dit.state_dict(), qtype)
    source = GGUFSource(path)
    assert source.architecture == "flux"
    assert set(source.names()) == set(tiny.dit.state_dict())
    for key, want in expected.items():
        got = source.get(key)
        assert tuple(got.shape) == want.shape == source.shape(key)
        assert got.dtype == source.dtype(key)
        np.testing.assert_array_equal(got.float().numpy(), want, err_msg=key)


def test_a_gguf_dit_loads_in_place_of_the_safetensors_file(
    tmp_path: Path, original_dir: Path, tiny: Components
) -> None:
    path = gguf_checkpoint(tmp_path / "q8", original_dir, tiny, T.Q8_0)
    loaded = load_components(
        path, device="cpu", dtype=torch.float32, text_encoder=original_dir / QWEN_FOLDER_NAME
    )
    assert loaded.version == "v1.1" and loaded.source_layout == "original"
    want = run_dit(tiny.dit)
    got = run_dit(loaded.dit)
    # Q8_0 keeps the tiny DiT's output within 1 % (its F32 tensors are exact).
    assert float((got - want).norm() / want.norm()) < 0.01
    assert torch.equal(loaded.dit.img_in.weight, tiny.dit.img_in.weight)


def test_version_comes_from_the_gguf_keys(
    tmp_path: Path, tiny_v10: Components, original_dir: Path
) -> None:
    folder = tmp_path / "v10"
    folder.mkdir()
    os.link(original_dir / "vae.safetensors", folder / "vae.safetensors")
    write_gguf(folder / "dit.gguf", tiny_v10.dit.state_dict(), T.Q8_0)
    loaded = load_components(
        folder / "dit.gguf",
        device="cpu",
        dtype=torch.float32,
        text_encoder=original_dir / QWEN_FOLDER_NAME,
    )
    assert loaded.version == "v1.0"
    assert loaded.dit.connector.scale_factor is not None


def test_the_stored_original_shape_is_honoured(tmp_path: Path, tiny: Components) -> None:
    state = tiny.dit.state_dict()
    key = "double_blocks.0.img_mlp.0.weight"  # [256, 64], stored as [512, 32]
    expected = write_gguf(
        tmp_path / "r.gguf", state, T.Q8_0, orig_shape={key: tuple(state[key].shape)}
    )
    source = GGUFSource(tmp_path / "r.gguf")
    assert source.shape(key) == tuple(state[key].shape)
    np.testing.assert_array_equal(source.get(key).numpy(), expected[key])


def test_diffusers_named_gguf_is_refused(tmp_path: Path) -> None:
    write_gguf(
        tmp_path / "d.gguf",
        {"transformer_blocks.0.attn.to_q.weight": torch.zeros(64, 64)},
        T.Q8_0,
    )
    with pytest.raises(WeightsError, match="diffusers-named"):
        GGUFSource(tmp_path / "d.gguf")


def test_a_gguf_missing_keys_is_refused_naming_them(
    tmp_path: Path, original_dir: Path, tiny: Components
) -> None:
    folder = tmp_path / "partial"
    folder.mkdir()
    os.link(original_dir / "vae.safetensors", folder / "vae.safetensors")
    state = {k: v for k, v in tiny.dit.state_dict().items() if not k.startswith("final_layer.")}
    write_gguf(folder / "dit.gguf", state, T.Q8_0)
    with pytest.raises(WeightsError, match="final_layer"):
        load_components(
            folder / "dit.gguf",
            device="cpu",
            dtype=torch.float32,
            text_encoder=original_dir / QWEN_FOLDER_NAME,
        )


def test_a_file_that_is_no_gguf_is_a_weights_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"not a gguf file at all")
    with pytest.raises(WeightsError, match="cannot read GGUF"):
        GGUFSource(path)
