"""Tiny seeded checkpoints written once per session in each layout; a private, offline
Hugging Face cache for every test (nothing here may read the user's cache or the network)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from tests.weights.hub_cache import hub_environment

from stepedit.model.dit import Step1XEditDiT
from stepedit.weights import Components, load_components, write_checkpoint


@pytest.fixture(autouse=True)
def empty_hub_cache(tmp_path: Path) -> Iterator[Path]:
    """An empty Hugging Face cache, offline: the user's cache and the Hub stay out of tests."""
    cache = tmp_path / "hf-home" / "hub"
    with hub_environment(cache, offline=True):
        yield cache


@pytest.fixture(scope="session")
def tiny() -> Components:
    return load_components("dummy:tiny-v1.1@3", device="cpu", dtype=torch.float32)


@pytest.fixture(scope="session")
def tiny_v10() -> Components:
    return load_components("dummy:tiny-v1.0@4", device="cpu", dtype=torch.float32)


@pytest.fixture(scope="session")
def original_dir(tiny: Components, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tiny, tmp_path_factory.mktemp("original"), "original")


@pytest.fixture(scope="session")
def diffusers_dir(tiny: Components, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tiny, tmp_path_factory.mktemp("diffusers"), "diffusers")


def dit_inputs(dit: Step1XEditDiT, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random but valid DiT inputs: 2x2 latent tokens plus 2x2 reference tokens, 5 text tokens."""
    config = dit.config
    generator = torch.Generator().manual_seed(seed)
    batch, tokens, text = 1, 8, 5
    ids = torch.zeros(batch, tokens, 3)
    ids[:, 4:, 0] = 1  # reference image tokens carry index 1
    ys, xs = torch.meshgrid(torch.arange(2), torch.arange(2), indexing="ij")
    ids[:, :4, 1], ids[:, :4, 2] = ys.flatten(), xs.flatten()
    ids[:, 4:, 1], ids[:, 4:, 2] = ys.flatten(), xs.flatten()
    llm = torch.randn(batch, text, config.connector_in_channels, generator=generator)
    inputs = {
        "img": torch.randn(batch, tokens, config.in_channels, generator=generator),
        "img_ids": ids,
        "txt_ids": torch.zeros(batch, text, 3),
        "timesteps": torch.full((batch,), 0.7),
        "llm_embedding": llm,
        "t_vec": torch.full((batch,), 0.7),
        "mask": torch.tensor([[1, 1, 1, 1, 0]]),
    }
    if config.version == "v1.2":
        inputs["text_embeddings"] = llm
        inputs["text_mask"] = inputs["mask"]
    return inputs


def run_dit(dit: Step1XEditDiT, seed: int = 0) -> torch.Tensor:
    with torch.no_grad():
        return dit(**dit_inputs(dit, seed))
