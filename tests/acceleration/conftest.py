"""Fixtures over `accel_tiny_edit`: a seeded tiny DiT and the input builder."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from accel_tiny_edit import EditInputs, make_inputs, make_tiny_dit

from stepedit.model import Step1XEditDiT


@pytest.fixture
def tiny_dit() -> Step1XEditDiT:
    return make_tiny_dit()


@pytest.fixture(name="make_inputs")
def make_inputs_fixture() -> Callable[..., EditInputs]:
    return make_inputs
