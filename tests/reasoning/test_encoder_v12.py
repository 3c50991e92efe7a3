"""v1.2 prompt-encoding rules (checked once against the reference functions on 20k random
strings and several grids; these tests pin the behaviour)."""

from __future__ import annotations

import pytest
import torch

from stepedit.encoder_v12 import (
    V12_EDIT_PREFIX,
    split_for_tokenizing,
    text_position_ids,
    vision_token_positions,
)

SPECIALS = ["<|im_start|>", "<|im_end|>", "<|image_pad|>"]


def test_prefix_is_the_reference_text() -> None:
    assert V12_EDIT_PREFIX.startswith("Given a reference image and a user editing instruction.\n")
    assert "editing instruction. \nThe description" in V12_EDIT_PREFIX
    assert V12_EDIT_PREFIX.endswith("The editing instruction is:")


def test_quoted_characters_are_pieces_of_their_own() -> None:
    pieces = split_for_tokenizing('Replace "AB" with “C”', 0, [])
    assert pieces == [
        ('Replace "', False),
        ("A", True),
        ("B", True),
        ('" with “', False),
        ("C", True),
        ("”", False),
    ]


def test_special_tokens_split_and_the_prefix_is_left_alone() -> None:
    text = '<|im_start|>say "x"<|image_pad|><|im_end|>'
    assert split_for_tokenizing(text, 0, SPECIALS) == [
        ("<|im_start|>", False),
        ('say "', False),
        ("x", True),
        ('"', False),
        ("<|image_pad|>", False),
        ("<|im_end|>", False),
    ]
    # Inside the first `prefix_len` characters quotes are ordinary text.
    assert split_for_tokenizing('<|im_start|>say "x"', 19, SPECIALS) == [
        ("<|im_start|>", False),
        ('say "x"', False),
    ]


def test_an_unclosed_quote_is_given_back() -> None:
    assert split_for_tokenizing('add "hat', 0, []) == [('add "hat', False)]


def test_vision_token_centres_map_onto_the_latent_grid() -> None:
    # Image handed to Qwen already at the processor's size: token i's centre is pixel 28 i + 13.5,
    # i.e. packed-latent coordinate (28 i + 13.5) / 16 - 11 / 16.
    positions = vision_token_positions((2, 3), (3 * 28, 2 * 28))
    expected_x = [(28 * i + 2.5) / 16 for i in range(3)]
    expected_y = [(28 * j + 2.5) / 16 for j in range(2)]
    expected = torch.tensor([[y, x] for y in expected_y for x in expected_x])
    assert torch.allclose(positions, expected, atol=1e-5)


def test_text_position_ids_layout() -> None:
    rope = torch.tensor([[10, 10, 10], [11, 11, 11], [12, 0, 0], [12, 0, 1], [14, 14, 14]])
    is_vision = torch.tensor([False, False, True, True, False])
    ids = text_position_ids(rope, is_vision, (1, 2), (56, 28))
    assert ids[:, 0].tolist() == [-5.0, -4.0, -3.0, -3.0, -1.0]
    assert ids[~is_vision, 1:].abs().sum() == 0
    assert ids[is_vision, 2].tolist() == pytest.approx([2.5 / 16, 30.5 / 16], abs=1e-5)
    with pytest.raises(ValueError, match="vision tokens"):
        text_position_ids(rope, is_vision, (2, 2), (56, 56))
