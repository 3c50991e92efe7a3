"""A new user's first commands with Hugging Face repo ids, against a cache built from tiny models.

The cache is laid out as huggingface_hub lays out downloads (tests/weights/hub_cache.py) and
read through huggingface_hub; the Hub itself is never contacted (HF_HUB_OFFLINE=1), except in
the download tests, where a local stand-in replaces the two calls that would reach it.
"""

from __future__ import annotations

import fnmatch
import logging
import pickle
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from huggingface_hub import scan_cache_dir, snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError
from PIL import Image
from tests.weights.hub_cache import (
    add_to_cache,
    can_write_listings,
    commit_of,
    files_of,
    hub_environment,
)

from stepedit.cli import main
from stepedit.errors import WeightsError
from stepedit.weights import (
    Components,
    MissingWeights,
    hub,
    load_components,
    resolve_checkpoint,
)
from stepedit.weights import components as components_module
from stepedit.weights.tensors import DictSource, SafetensorsSource, write_safetensors

ORIGINAL = "stepfun-ai/Step1X-Edit"
DIFFUSERS = "stepfun-ai/Step1X-Edit-v1p1-diffusers"
QWEN = "Qwen/Qwen2.5-VL-7B-Instruct"
V10 = "step1x-edit-i1258.safetensors"
V11 = "step1x-edit-v1p1-official.safetensors"
FP8 = "step1x-edit-i1258-FP8.safetensors"


@pytest.fixture(scope="session")
def published(
    tiny_v10: Components,
    original_dir: Path,
    diffusers_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, dict[str, Path]]:
    """What the three repositories hold, as the real ones are laid out: the original-layout
    repository has v1.0 and v1.1 DiT files (and an FP8 one) but no Qwen2.5-VL folder."""
    extra = tmp_path_factory.mktemp("published")
    v10 = extra / V10
    write_safetensors(v10, DictSource(tiny_v10.dit.state_dict()))
    readme = extra / "README.md"
    readme.write_text("# Step1X-Edit\n")
    return {
        ORIGINAL: {
            V10: v10,
            FP8: v10,  # only its name matters here
            V11: original_dir / V11,
            "vae.safetensors": original_dir / "vae.safetensors",
            "README.md": readme,
        },
        QWEN: files_of(original_dir / "Qwen2.5-VL-7B-Instruct"),
        DIFFUSERS: files_of(diffusers_dir),
    }


@pytest.fixture
def hub_cache(empty_hub_cache: Path, published: dict[str, dict[str, Path]]) -> Path:
    for repo_id, files in published.items():
        add_to_cache(empty_hub_cache, repo_id, files)
    return empty_hub_cache


def _assert_same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    left, right = a.state_dict(), b.state_dict()
    assert left.keys() == right.keys()
    assert all(torch.equal(left[k], right[k]) for k in left)


def test_the_fake_cache_is_what_huggingface_hub_reads(
    hub_cache: Path, published: dict[str, dict[str, Path]]
) -> None:
    info = scan_cache_dir(hub_cache)
    assert not info.warnings
    repos = {repo.repo_id: repo for repo in info.repos}
    assert set(repos) == set(published)
    for repo_id, files in published.items():
        (revision,) = repos[repo_id].revisions
        assert revision.refs == frozenset({"main"})
        names = {f.file_path.relative_to(revision.snapshot_path).as_posix() for f in revision.files}
        assert names == set(files)


def test_a_diffusers_repo_id_loads_offline_and_edits(hub_cache: Path, tiny: Components) -> None:
    from stepedit.pipeline import EditPipeline
    from stepedit.request import EditRequest

    pipe = EditPipeline.from_pretrained(DIFFUSERS, device="cpu", dtype=torch.float32)
    assert pipe.version == "v1.1"
    assert pipe.components.source_layout == "diffusers"
    _assert_same(pipe.dit, tiny.dit)
    _assert_same(pipe.text_model, tiny.text_model)
    image = Image.linear_gradient("L").resize((96, 64)).convert("RGB")
    request = EditRequest(prompt="add a hat", num_inference_steps=2, seed=7, size_level=256)
    assert pipe(image, request).images[0].size == image.size


def test_the_edit_command_takes_a_repo_id(hub_cache: Path, tmp_path: Path) -> None:
    source, output = tmp_path / "in.png", tmp_path / "out.png"
    Image.linear_gradient("L").resize((96, 64)).convert("RGB").save(source)
    args = ["edit", str(source), "add a hat", "-o", str(output), "--model", DIFFUSERS]
    assert main([*args, "--steps", "2", "--size", "512", "--seed", "1", "--no-progress"]) == 0
    assert Image.open(output).size == (96, 64)


def test_the_original_repo_uses_the_newest_dit_and_the_cached_text_encoder(
    hub_cache: Path, tiny: Components, tiny_v10: Components, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="stepedit.weights"):
        loaded = load_components(ORIGINAL, device="cpu", dtype=torch.float32)
    assert (loaded.version, loaded.source_layout) == ("v1.1", "original")
    _assert_same(loaded.dit, tiny.dit)
    _assert_same(loaded.text_model, tiny.text_model)
    assert f"using {V11} (the newest release)" in caplog.text
    assert f"text encoder {QWEN} (Hugging Face cache)" in caplog.text

    older = load_components(ORIGINAL, device="cpu", dtype=torch.float32, version="v1.0")
    assert older.version == "v1.0"
    _assert_same(older.dit, tiny_v10.dit)


def test_the_fp8_file_only_when_named(hub_cache: Path) -> None:
    assert resolve_checkpoint(ORIGINAL).dit_files[0].name == V11
    assert resolve_checkpoint(ORIGINAL, version="v1.0").dit_files[0].name == V10
    assert resolve_checkpoint(f"{ORIGINAL}/{FP8}").dit_files[0].name == FP8


@pytest.mark.parametrize("where", ["repo id", "diffusers repo id", "folder"])
def test_the_text_encoder_can_live_elsewhere(
    where: str,
    hub_cache: Path,
    published: dict[str, dict[str, Path]],
    original_dir: Path,
    tiny: Components,
) -> None:
    add_to_cache(hub_cache, "someone/Qwen2.5-VL-7B-Edit", published[QWEN])
    spec = {
        "repo id": "someone/Qwen2.5-VL-7B-Edit",
        "diffusers repo id": DIFFUSERS,  # its text_encoder/ and processor/
        "folder": str(original_dir / "Qwen2.5-VL-7B-Instruct"),
    }[where]
    shutil.rmtree(hub_cache / "models--Qwen--Qwen2.5-VL-7B-Instruct")  # not the default, then
    loaded = load_components(ORIGINAL, device="cpu", dtype=torch.float32, text_encoder=spec)
    _assert_same(loaded.text_model, tiny.text_model)
    text = "<|im_start|>user\nmake it blue<|im_end|>"
    assert loaded.processor.tokenizer(text).input_ids == tiny.processor.tokenizer(text).input_ids


def test_the_text_encoder_setting_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    from stepedit.commands.serve import settings_from_args
    from stepedit.settings import Settings

    monkeypatch.setenv("STEPEDIT_TEXT_ENCODER", QWEN)
    monkeypatch.setenv("STEPEDIT_DOWNLOAD", "1")
    assert (Settings().text_encoder, Settings().download) == (QWEN, True)
    monkeypatch.delenv("STEPEDIT_TEXT_ENCODER")
    monkeypatch.delenv("STEPEDIT_DOWNLOAD")
    from stepedit.cli import build_parser

    args = build_parser().parse_args(
        ["serve", "--model", ORIGINAL, "--text-encoder", "/models/qwen", "--download"]
    )
    settings = settings_from_args(args)
    assert (settings.text_encoder, settings.download) == ("/models/qwen", True)
    worker = build_parser().parse_args(["worker", "--model", ORIGINAL, "--text-encoder", QWEN])
    assert (worker.text_encoder, worker.download) == (QWEN, None)


def test_revisions(hub_cache: Path) -> None:
    commit = commit_of(DIFFUSERS, "main")
    assert resolve_checkpoint(f"{DIFFUSERS}@{commit}").root.name == commit
    assert resolve_checkpoint(DIFFUSERS, revision="main").root.name == commit
    with pytest.raises(MissingWeights) as caught:
        resolve_checkpoint(f"{DIFFUSERS}@v2")
    assert caught.value.commands == (f"stepedit download {DIFFUSERS}@v2",)
    with pytest.raises(WeightsError, match="names revision 'main' but revision='v2'"):
        resolve_checkpoint(f"{DIFFUSERS}@main", revision="v2")


def test_a_local_path_wins_over_a_repo_id_of_the_same_spelling(
    hub_cache: Path, original_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    shutil.copytree(original_dir, tmp_path / DIFFUSERS)
    checkpoint = resolve_checkpoint(DIFFUSERS)
    assert checkpoint.layout == "original"  # the local folder, not the cached diffusers repo
    assert checkpoint.root == Path(DIFFUSERS)
    with pytest.raises(WeightsError, match="is a path"):
        resolve_checkpoint(DIFFUSERS, revision="main")


def test_a_repo_id_not_in_the_cache_names_the_command_that_fetches_it(
    empty_hub_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from stepedit.pipeline import EditPipeline

    with pytest.raises(MissingWeights) as caught:
        EditPipeline.from_pretrained(DIFFUSERS, device="cpu", dtype=torch.float32)
    assert caught.value.commands == (f"stepedit download {DIFFUSERS}",)
    assert pickle.loads(pickle.dumps(caught.value)).commands == caught.value.commands
    assert str(empty_hub_cache) in caught.value.message
    assert "HF_HUB_OFFLINE is set" in caught.value.message

    # The original layout needs the text encoder too: both commands, in one message.
    with pytest.raises(MissingWeights) as caught:
        load_components(ORIGINAL, device="cpu", dtype=torch.float32, version="v1.0")
    assert caught.value.commands == (
        f"stepedit download {ORIGINAL} --model-version v1.0",
        f"stepedit download {QWEN}",
    )

    with pytest.raises(WeightsError, match="does not exist"):
        load_components(tmp_path / "nowhere", device="cpu", dtype=torch.float32)

    image = tmp_path / "in.png"
    Image.new("RGB", (64, 64)).save(image)
    assert main(["edit", str(image), "x", "-o", str(tmp_path / "o.png"), "--model", ORIGINAL]) == 1
    assert f"stepedit download {ORIGINAL}" in capsys.readouterr().err


def _spy_on_loading(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every tensor read and every loader call: the pre-flight check must do none."""
    events: list[str] = []
    read = SafetensorsSource.get

    def get(self: SafetensorsSource, key: str) -> torch.Tensor:
        events.append(f"read {key}")
        return read(self, key)

    monkeypatch.setattr(SafetensorsSource, "get", get)
    for name in ("load_dit", "load_ae", "load_text_model"):
        loader = getattr(components_module, name)

        def record(*args: Any, _name: str = name, _loader: Any = loader, **kwargs: Any) -> Any:
            events.append(_name)
            return _loader(*args, **kwargs)

        monkeypatch.setattr(components_module, name, record)
    return events


def test_every_missing_part_is_named_before_anything_loads(
    original_dir: Path, diffusers_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = _spy_on_loading(monkeypatch)
    original = tmp_path / "original"
    shutil.copytree(original_dir, original)
    qwen = original / "Qwen2.5-VL-7B-Instruct"
    for path in (original / "vae.safetensors", qwen / "model.safetensors", qwen / "tokenizer.json"):
        path.unlink()
    with pytest.raises(MissingWeights) as caught:
        load_components(original, device="cpu", dtype=torch.float32)
    assert caught.value.missing == (
        "VAE file vae.safetensors (or ae.safetensors)",
        f"text encoder in {qwen}: model.safetensors, tokenizer.json",
    )

    diffusers = tmp_path / "diffusers"
    shutil.copytree(diffusers_dir, diffusers)
    for name in (
        "transformer/config.json",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/config.json",
        "processor/tokenizer_config.json",
    ):
        (diffusers / name).unlink()
    with pytest.raises(MissingWeights) as caught:
        load_components(diffusers, device="cpu", dtype=torch.float32)
    assert caught.value.missing == (
        "transformer/: config.json",
        "vae/: diffusion_pytorch_model.safetensors",
        f"text encoder in {diffusers}: text_encoder/config.json, processor/tokenizer_config.json",
    )
    assert events == []  # not one tensor read, no loader called

    # A working checkpoint does go through the spies (so they would have seen a load).
    load_components(original_dir, device="cpu", dtype=torch.float32)
    assert events[0] == "load_dit" and "load_text_model" in events


def test_a_partly_cached_repo_names_what_it_lacks_and_its_command(
    empty_hub_cache: Path, published: dict[str, dict[str, Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    events = _spy_on_loading(monkeypatch)
    files = published[DIFFUSERS]
    kept = [name for name in files if not name.startswith(("vae/", "text_encoder/"))]
    snapshot = add_to_cache(empty_hub_cache, DIFFUSERS, files, only=kept)
    with pytest.raises(MissingWeights) as caught:
        load_components(DIFFUSERS, device="cpu", dtype=torch.float32)
    assert caught.value.missing == (
        "vae/: config.json, diffusion_pytorch_model.safetensors",
        f"text encoder in {DIFFUSERS}: text_encoder/config.json, text_encoder/model.safetensors",
    )
    assert caught.value.commands == (f"stepedit download {DIFFUSERS}",)
    assert f"(looked in {snapshot})" in caught.value.message
    assert events == []


@pytest.mark.skipif(not can_write_listings(), reason="huggingface_hub keeps no file listings")
def test_a_repo_downloaded_in_part_is_found_despite_the_hubs_own_listing(
    empty_hub_cache: Path, published: dict[str, dict[str, Path]], tiny: Components
) -> None:
    """`stepedit download stepfun-ai/Step1X-Edit` fetches 2 of the repository's files; newer
    huggingface_hub versions list the whole repository and call such a snapshot incomplete."""
    needed = [V11, "vae.safetensors"]
    add_to_cache(empty_hub_cache, ORIGINAL, published[ORIGINAL], only=needed, listed=True)
    add_to_cache(empty_hub_cache, QWEN, published[QWEN], listed=True)
    with pytest.raises(LocalEntryNotFoundError):  # what huggingface_hub itself says
        snapshot_download(ORIGINAL, local_files_only=True)
    loaded = load_components(ORIGINAL, device="cpu", dtype=torch.float32)
    _assert_same(loaded.dit, tiny.dit)
    with pytest.raises(MissingWeights) as caught:
        resolve_checkpoint(ORIGINAL, version="v1.0")
    assert caught.value.commands == (f"stepedit download {ORIGINAL} --model-version v1.0",)


def test_download_true_uses_the_cache_first_and_honours_offline(
    hub_cache: Path, empty_hub_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the Hub was contacted")

    monkeypatch.setattr(hub, "fetch", no_network)
    monkeypatch.setattr(hub, "remote_files", no_network)
    loaded = load_components(DIFFUSERS, device="cpu", dtype=torch.float32, download=True)
    assert loaded.version == "v1.1"
    shutil.rmtree(hub_cache / "models--stepfun-ai--Step1X-Edit-v1p1-diffusers")
    with pytest.raises(MissingWeights, match="HF_HUB_OFFLINE is set"):
        load_components(DIFFUSERS, device="cpu", dtype=torch.float32, download=True)


class FakeHub:
    """Stands in for the Hub's two calls: the file list, and a download into the cache."""

    def __init__(self, cache: Path, published: dict[str, dict[str, Path]]) -> None:
        self.cache, self.published = cache, published
        self.fetched: list[tuple[str, list[str] | None]] = []

    def remote_files(self, ref: hub.HubRef) -> list[str]:
        if ref.repo_id not in self.published:
            raise WeightsError(f"cannot list {ref} on the Hugging Face Hub: 404")
        return sorted(self.published[ref.repo_id])

    def fetch(
        self, ref: hub.HubRef, patterns: list[str] | None, local_dir: Path | None = None
    ) -> Path:
        self.fetched.append((ref.repo_id, patterns))
        files = self.published[ref.repo_id]
        names = [
            n for n in files if patterns is None or any(fnmatch.fnmatch(n, p) for p in patterns)
        ]
        if local_dir is None:
            return add_to_cache(self.cache, ref.repo_id, files, only=names)
        for name in names:
            (local_dir / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(files[name], local_dir / name)
        return local_dir


@pytest.fixture
def fake_hub(
    empty_hub_cache: Path, published: dict[str, dict[str, Path]], monkeypatch: pytest.MonkeyPatch
) -> Any:
    fake = FakeHub(empty_hub_cache, published)
    monkeypatch.setattr(hub, "remote_files", fake.remote_files)
    monkeypatch.setattr(hub, "fetch", fake.fetch)
    with hub_environment(empty_hub_cache, offline=False):
        yield fake


@pytest.mark.parametrize(
    ("args", "fetched"),
    [
        ([ORIGINAL], [(ORIGINAL, [V11, "vae.safetensors"]), (QWEN, None)]),
        ([ORIGINAL, "--version", "v1.0"], [(ORIGINAL, [V10, "vae.safetensors"]), (QWEN, None)]),
        ([f"{ORIGINAL}/{FP8}"], [(ORIGINAL, [FP8, "vae.safetensors"]), (QWEN, None)]),
        ([ORIGINAL, "--no-text-encoder"], [(ORIGINAL, [V11, "vae.safetensors"])]),
        (
            [DIFFUSERS],
            [(DIFFUSERS, ["model_index.json", "transformer/*", "vae/*", "text_encoder/*",
                          "processor/*", "tokenizer/*", "scheduler/*"])],
        ),
        ([QWEN], [(QWEN, None)]),
    ],
)  # fmt: skip
def test_download_fetches_only_what_loading_reads(
    args: list[str], fetched: list[tuple[str, list[str] | None]], fake_hub: FakeHub
) -> None:
    assert main(["download", *args]) == 0
    assert fake_hub.fetched == fetched


def test_downloaded_repos_then_load_with_no_network(
    fake_hub: FakeHub, tiny: Components, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["download", ORIGINAL]) == 0
    assert f"use it: stepedit edit --model {ORIGINAL}" in capsys.readouterr().out
    fake_hub.fetched.clear()
    loaded = load_components(ORIGINAL, device="cpu", dtype=torch.float32)
    _assert_same(loaded.dit, tiny.dit)
    assert fake_hub.fetched == []
    # download=True fetches what is missing (here a whole repository), then loads.
    loaded = load_components(DIFFUSERS, device="cpu", dtype=torch.float32, download=True)
    assert [repo for repo, _ in fake_hub.fetched] == [DIFFUSERS]
    _assert_same(loaded.dit, tiny.dit)


def test_download_refuses_clearly(fake_hub: FakeHub, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["download", "stepfun-ai/nothing-here"]) == 1
    assert "cannot list stepfun-ai/nothing-here" in capsys.readouterr().out
    assert main(["download", ORIGINAL, "--version", "v1.2"]) == 1
    assert f"{ORIGINAL} has no DiT file step1x-edit-v1p2.safetensors" in capsys.readouterr().out


def test_the_older_download_form_fills_a_directory(
    fake_hub: FakeHub, tmp_path: Path, tiny: Components
) -> None:
    directory = tmp_path / "Step1X-Edit"
    assert main(["download", "--version", "v1.1", str(directory)]) == 0
    assert (directory / V11).is_file() and not (directory / V10).exists()
    loaded = load_components(directory, device="cpu", dtype=torch.float32)
    _assert_same(loaded.text_model, tiny.text_model)


def test_convert_reads_a_repo_id_with_its_text_encoder_from_the_cache(
    hub_cache: Path, tmp_path: Path, tiny: Components
) -> None:
    target = tmp_path / "converted"
    assert main(["convert", ORIGINAL, str(target), "--to", "diffusers"]) == 0
    assert (target / "processor" / "tokenizer.json").is_file()
    assert not any(path.is_symlink() for path in target.rglob("*"))  # files, not cache links
    loaded = load_components(target, device="cpu", dtype=torch.float32)
    _assert_same(loaded.dit, tiny.dit)
    _assert_same(loaded.text_model, tiny.text_model)
