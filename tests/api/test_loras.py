"""LoRA adapters through the native API (docs/lora.md), on the tiny random model with a real
adapter file in the official format: `GET /v1/loras` lists what the server preloaded (never a
path), a request picks among them by name (an unknown one is refused at submit), and a job with an
adapter is the `stepedit edit --lora` result exactly."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from tests.weights.test_lora import official_file
from tiny_app import TINY_MODEL, download, in_process, wait_for_job  # type: ignore[import-not-found]

from stepedit.cli import main
from stepedit.model.dit import Step1XEditDiT
from stepedit.pipeline import EditPipeline
from stepedit.settings import Settings

pytestmark = pytest.mark.slow

RANK, SCALE = 4, 0.8
EDIT = {"prompt": "add a hat", "seed": 3, "num_inference_steps": 2, "size_level": 512}


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dit = EditPipeline.from_pretrained(TINY_MODEL, device="cpu").dit
    assert isinstance(dit, Step1XEditDiT)
    path = tmp_path_factory.mktemp("loras") / "hands.safetensors"
    official_file(path, dit, rank=RANK, alpha=4.0, seed=5)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, lora_file: Path) -> Iterator[TestClient]:
    """`hands` merged at 0.8 (the default set), `spare` (the same file) preloaded at 0."""
    settings = Settings(
        model=TINY_MODEL,
        device="cpu",
        data_dir=tmp_path_factory.mktemp("data"),
        safety_checker=False,
        public_base_url="http://testserver",
        loras=[f"hands={lora_file}:{SCALE}", f"spare={lora_file}:0"],
    )
    with in_process(settings) as client:
        yield client


def source_png() -> bytes:
    buffer = io.BytesIO()
    Image.linear_gradient("L").resize((96, 64)).convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def edit(client: TestClient, **fields: Any) -> bytes:
    """The output pixels of a native job (multipart, `loras` as JSON text when given)."""
    data = {key: str(value) for key, value in {**EDIT, **fields}.items()}
    if "loras" in fields:
        data["loras"] = json.dumps(fields["loras"])
    files = {"image": ("a.png", source_png(), "image/png")}
    response = client.post("/v1/jobs", data=data, files=files)
    assert response.status_code == 202, response.text
    job = wait_for_job(client, response.json()["id"])
    assert job["status"] == "succeeded", job
    outputs: list[dict[str, str]] = job["outputs"]  # type: ignore[assignment]
    return download(client, outputs[0]["url"]).convert("RGB").tobytes()


def test_the_preloaded_adapters_are_listed_without_their_paths(
    server: TestClient, lora_file: Path
) -> None:
    response = server.get("/v1/loras")
    assert response.status_code == 200, response.text
    listed = {entry["name"]: entry for entry in response.json()["data"]}
    assert set(listed) == {"hands", "spare"}
    hands = listed["hands"]
    assert hands["format"] == "official" and hands["rank"] == RANK and hands["targets"] > 0
    assert (hands["default_scale"], hands["merged"]) == (SCALE, True)
    assert (listed["spare"]["default_scale"], listed["spare"]["merged"]) == (0.0, False)
    assert str(lora_file.parent) not in response.text and "path" not in hands
    health = server.get("/health").json()
    assert health["loras"] == ["hands", "spare"]
    assert health["optimizations"]["mode"] == "as loaded"  # CPU, --optimize auto
    assert health["optimizations"]["attention"] == "sdpa"


def test_an_unknown_adapter_is_refused_at_submit(server: TestClient) -> None:
    before = server.get("/v1/jobs").json()["data"]
    body = {"image": "data:image/png;base64,", "loras": [{"name": "nope", "scale": 1}], **EDIT}
    response = server.post("/v1/jobs", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "loras" and "'nope' not loaded" in error["message"]
    assert "hands, spare" in error["message"]
    assert server.get("/v1/jobs").json()["data"] == before  # no job was created


@pytest.mark.parametrize(
    "name", ["../hands.safetensors", "/models/hands.safetensors", "https://x.test/a.safetensors"]
)
def test_a_path_or_url_is_no_adapter_name(server: TestClient, name: str) -> None:
    body = {"image": "aGk=", "loras": [{"name": name}], **EDIT}
    response = server.post("/v1/jobs", json=body)
    assert response.status_code == 422 and response.json()["error"]["param"] == "loras.0.name"


def test_an_adapter_by_name_changes_the_edit_and_equals_the_cli(
    server: TestClient, lora_file: Path, tmp_path: Path
) -> None:
    with_hands = edit(server, loras=[{"name": "hands", "scale": SCALE}])
    assert edit(server) == with_hands  # no `loras`: the default set, hands at 0.8
    without = edit(server, loras=[])
    assert without != with_hands
    # the command line, with the same adapter file merged at the same scale
    source, output = tmp_path / "in.png", tmp_path / "out.png"
    source.write_bytes(source_png())
    args = [
        "edit", str(source), EDIT["prompt"], "-o", str(output), "--model", TINY_MODEL,
        "--device", "cpu", "--size", "512", "--steps", "2", "--seed", "3", "--no-progress",
        "--lora", f"hands={lora_file}:{SCALE}",
    ]  # fmt: skip
    assert main(args) == 0
    with Image.open(output) as cli:
        assert cli.convert("RGB").tobytes() == with_hands


def test_serve_lora_flag(live_server: Any, lora_file: Path) -> None:
    """`stepedit serve --lora NAME=PATH:SCALE` (the real command, in a subprocess)."""
    import httpx

    running = live_server("--lora", f"hands={lora_file}:0.5", "--device", "cpu", model=TINY_MODEL)
    listed = httpx.get(f"{running.base_url}/v1/loras", timeout=10).json()["data"]
    assert [(lora["name"], lora["default_scale"]) for lora in listed] == [("hands", 0.5)]
