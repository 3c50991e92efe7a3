"""QwenEditEncoder on the tiny random Qwen2.5-VL: the reference's tokenization and embedding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from stepedit.encoder import (
    INSTRUCTION_PREFIX,
    EncodingCache,
    QwenEditEncoder,
    split_quoted,
    vision_utils_size,
)
from stepedit.model.qwen_tiny import build_tiny_qwen, save_tiny_qwen
from stepedit.weights.checkpoint import TextEncoder
from stepedit.weights.components import load_text_model


@pytest.fixture(scope="module")
def encoder() -> QwenEditEncoder:
    model, processor = build_tiny_qwen(seed=0)
    return QwenEditEncoder(model, processor, max_length=640)


@pytest.fixture(scope="module")
def image() -> Image.Image:
    return Image.linear_gradient("L").resize((320, 224)).convert("RGB")


def test_split_quoted_spells_out_quoted_text() -> None:
    head = "x" * 200
    assert split_quoted(head + 'say "hi" now') == [head + 'say "', "“h”", "“i”", '" now']
    # curly and single quotes count too
    assert split_quoted(head + "a 'b' c“d”") == [head + 'a "', "“b”", '" c"', "“d”", '"']
    # quotes early in the text (the system turn and the prefix) are left alone
    assert split_quoted('the "Enhanced prompt"') == ['the "Enhanced prompt"']


def test_template_has_reference_layout(encoder: QwenEditEncoder) -> None:
    text = encoder.render("make it blue")
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    assert f"<|im_start|>user\n{INSTRUCTION_PREFIX}Picture 1: <|vision_start|>" in text
    assert text.endswith("<|vision_end|>make it blue<|im_end|>\n<|im_start|>assistant\n")


def test_prefix_length_keeps_the_prefix_last_token(encoder: QwenEditEncoder) -> None:
    text = encoder.render("")
    head = text[: text.index("Picture 1:")]
    ids = encoder.tokenizer(head).input_ids
    assert encoder.prefix_length == len(ids) - 1
    assert encoder.tokenizer.decode(ids[encoder.prefix_length :]) == ":"


def test_embedding_shape_and_mask(encoder: QwenEditEncoder, image: Image.Image) -> None:
    short = encoder.encode("add a hat", image)
    long = encoder.encode("add a red hat please", image)
    assert short.emb.shape == (1, 640, 64) and short.mask.shape == (1, 640)
    assert short.mask.dtype == torch.long
    # v1.0/v1.1 text tokens have no positions, and no quote embeddings
    assert torch.all(short.txt_ids == 0) and short.txt_ids.shape == (1, 640, 3)
    assert short.text_embeds is None and short.text_mask is None
    length = int(short.mask.sum())
    assert int(long.mask.sum()) - length == len(" red") + len(" please")
    assert torch.all(short.emb[0, length:] == 0)
    # 256..324 image tokens sit between the kept ":" and the instruction
    assert 256 < length < 400


def test_encoding_is_deterministic_and_prompt_dependent(
    encoder: QwenEditEncoder, image: Image.Image
) -> None:
    first = encoder.encode("add a hat", image).emb
    again = encoder.encode("add a hat", image).emb
    other = encoder.encode("add a cat", image).emb
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_quoted_text_is_tokenized_per_character(encoder: QwenEditEncoder) -> None:
    text = encoder.render('write "ab"')
    expanded = encoder.tokenizer(text, return_tensors="pt").input_ids[0]
    merged = encoder.token_ids(text, expanded)
    assert encoder.tokenizer.decode(merged[-24:]).endswith(
        'write "ab"<|im_end|>\n<|im_start|>assistant\n'
    )
    # each quoted character went through the tokenizer as “c” and was unwrapped again
    assert encoder.open_quote_id is not None
    assert encoder.open_quote_id not in merged.tolist()
    assert encoder.close_quote_id not in merged.tolist()


def test_cache_returns_identical_encoding(encoder: QwenEditEncoder, image: Image.Image) -> None:
    cache = EncodingCache(capacity=2)
    fresh = encoder.encode("", image)
    cached = cache.get(encoder.encode, "", image)
    hit = cache.get(encoder.encode, "", image)
    assert torch.equal(fresh.emb, cached.emb) and torch.equal(fresh.mask, cached.mask)
    assert hit is cached and (cache.hits, cache.misses) == (1, 1)
    # another image (same size, other pixels) is another entry; the oldest falls out
    other = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)  # the gradient runs top to bottom
    cache.get(encoder.encode, "", other)
    cache.get(encoder.encode, "x", image)
    assert cache.get(encoder.encode, "", image) is not cached


def test_vision_utils_size_rounds_to_28() -> None:
    assert vision_utils_size(512, 384) == (504, 392)
    assert vision_utils_size(28, 28) == (56, 56)  # raised to the 4*28*28 minimum


def test_tiny_qwen_is_seeded_and_round_trips(tmp_path: Path, image: Image.Image) -> None:
    model, processor = build_tiny_qwen(seed=3)
    same, _ = build_tiny_qwen(seed=3)
    other, _ = build_tiny_qwen(seed=4)
    weights = model.state_dict()
    assert all(torch.equal(weights[k], v) for k, v in same.state_dict().items())
    assert not all(torch.equal(weights[k], v) for k, v in other.state_dict().items())
    save_tiny_qwen(model, processor, tmp_path)
    folder = TextEncoder(tmp_path, tmp_path, str(tmp_path))
    loaded_model, loaded_processor = load_text_model(
        folder, device=torch.device("cpu"), dtype=torch.float32
    )
    expected = QwenEditEncoder(model, processor).encode("add a hat", image).emb
    got = QwenEditEncoder(loaded_model, loaded_processor).encode("add a hat", image).emb
    assert torch.equal(expected, got)


def test_tensor_image_processor_is_the_fast_path_of_the_pil_one() -> None:
    """The diffusers pipelines' processor (transformers' torchvision one, computed here in torch)
    differs from the PIL one by its resize only: with no resize they agree to float rounding,
    with a resize they differ a little (antialiased bicubic on uint8 vs PIL's bicubic), and the
    patch layout and grid are the same. Its equality with torchvision's own processor is checked
    by scripts/parity (transformers 4.55, torchvision 0.29: max |diff| 0)."""
    from stepedit.model.qwen import TensorQwenImageProcessor, with_tensor_image_processor
    from stepedit.model.qwen_tiny import build_tiny_processor

    pil = build_tiny_processor()
    tensor = with_tensor_image_processor(pil)
    assert isinstance(tensor.image_processor, TensorQwenImageProcessor)
    rng = torch.Generator().manual_seed(0)
    exact = Image.fromarray(torch.randint(0, 255, (448, 560, 3), generator=rng).byte().numpy())
    a = pil.image_processor(images=[exact], return_tensors="pt")
    b = tensor.image_processor(images=[exact], return_tensors="pt")
    assert torch.equal(a["image_grid_thw"], b["image_grid_thw"])
    torch.testing.assert_close(a["pixel_values"], b["pixel_values"], rtol=0, atol=1e-5)
    resized = exact.resize((300, 200))
    a = pil.image_processor(images=[resized], return_tensors="pt")
    b = tensor.image_processor(images=[resized], return_tensors="pt")
    assert torch.equal(a["image_grid_thw"], b["image_grid_thw"])
    difference = float((a["pixel_values"] - b["pixel_values"]).abs().max())
    assert 0 < difference < 0.5
