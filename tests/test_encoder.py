"""QwenEditEncoder on the tiny random Qwen2.5-VL: the reference's tokenization and embedding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from stepedit.encoder import INSTRUCTION_PREFIX, QwenEditEncoder, split_quoted, vision_utils_size
from stepedit.model.qwen_tiny import build_tiny_qwen, load_qwen, save_tiny_qwen


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
    emb, mask = encoder(["add a hat", "add a red hat please"], [image, image])
    assert emb.shape == (2, 640, 64) and mask.shape == (2, 640)
    assert mask.dtype == torch.long
    lengths = mask.sum(dim=1)
    assert int(lengths[1]) - int(lengths[0]) == len(" red") + len(" please")
    assert torch.all(emb[0, int(lengths[0]) :] == 0)
    # 256..324 image tokens sit between the kept ":" and the instruction
    assert 256 < int(lengths[0]) < 400


def test_encoding_is_deterministic_and_prompt_dependent(
    encoder: QwenEditEncoder, image: Image.Image
) -> None:
    first, _ = encoder(["add a hat"], [image])
    again, _ = encoder(["add a hat"], [image])
    other, _ = encoder(["add a cat"], [image])
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
    fresh, fresh_mask = encoder([""], [image])
    cached, cached_mask = encoder([""], [image], use_cache=True)
    hit, _ = encoder([""], [image], use_cache=True)
    assert torch.equal(fresh, cached) and torch.equal(fresh_mask, cached_mask)
    assert torch.equal(cached, hit)


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
    loaded_model, loaded_processor = load_qwen(tmp_path)
    expected, _ = QwenEditEncoder(model, processor)(["add a hat"], [image])
    got, _ = QwenEditEncoder(loaded_model, loaded_processor)(["add a hat"], [image])
    assert torch.equal(expected, got)


def test_generate_returns_text(encoder: QwenEditEncoder, image: Image.Image) -> None:
    messages = [
        {
            "role": "user",
            "content": [{"type": "image", "image": image}, {"type": "text", "text": "hi"}],
        }
    ]
    reply = encoder.generate(messages, max_new_tokens=3)
    assert isinstance(reply, str)
    assert reply == encoder.generate(messages, max_new_tokens=3)  # greedy: deterministic
