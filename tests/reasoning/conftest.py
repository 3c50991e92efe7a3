"""Fixtures for the reasoning tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from PIL import Image

from .scripted import ScriptedMLLM, default_answers


@pytest.fixture
def source() -> Image.Image:
    return Image.new("RGB", (64, 48), (200, 120, 40))


@pytest.fixture
def scripted() -> Callable[..., ScriptedMLLM]:
    def make(**overrides: list[str]) -> ScriptedMLLM:
        return ScriptedMLLM(default_answers(**overrides))

    return make
