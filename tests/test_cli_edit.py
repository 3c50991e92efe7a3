"""`stepedit edit` end to end on CPU with the tiny random model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from stepedit.cli import main

MODEL = "dummy:tiny-v1.1"
FAST = ["--model", MODEL, "--size", "512", "--steps", "2", "--no-progress"]


@pytest.fixture()
def source(tmp_path: Path) -> Path:
    path = tmp_path / "cat.png"
    Image.linear_gradient("L").resize((300, 200)).convert("RGB").save(path)
    return path


def test_edit_writes_an_image_at_the_source_size(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.png"
    code = main(["edit", str(source), "add a hat", "-o", str(out), "--seed", "3", *FAST])
    assert code == 0
    assert Image.open(out).size == (300, 200)
    assert "seed=3" in capsys.readouterr().out


def test_edit_several_images(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.png"
    assert main(["edit", str(source), "add a hat", "-o", str(out), "--n", "2", *FAST]) == 0
    assert (tmp_path / "out-0.png").is_file() and (tmp_path / "out-1.png").is_file()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--steps", "0"], "--steps: must be in 1..100"),
        (["--strength", "2"], "--strength"),
        (["--guidance", "nan"], "--guidance"),
        (["--n", "9"], "--n"),
        (["--seed", "-5"], "--seed"),
        (["--negative-prompt", "x" * 3000], "--negative-prompt"),
    ],
)
def test_bad_parameters_exit_2_naming_the_flag(
    source: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    args = ["edit", str(source), "add a hat", "-o", str(tmp_path / "o.png"), *FAST, *extra]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert "num_inference_steps" not in err and "guidance_scale" not in err


@pytest.mark.parametrize("size", ["256", "640x480", "2048"])
def test_size_offers_exactly_the_documented_levels(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], size: str
) -> None:
    args = ["edit", str(source), "x", "-o", str(tmp_path / "o.png"), *FAST, "--size", size]
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2
    assert "--size" in capsys.readouterr().err


def test_output_path_is_checked_before_loading(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["edit", str(source), "x", "-o", str(tmp_path / "out.gif"), *FAST]) == 2
    assert "-o must end in" in capsys.readouterr().err
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert main(["edit", str(source), "x", "-o", str(blocked / "out.png"), *FAST]) == 2
    assert "cannot write" in capsys.readouterr().err


def test_bad_input_never_imports_torch(source: Path, tmp_path: Path) -> None:
    """Every check runs before the model: with torch unimportable, bad input still gets its
    answer (exit 2), and only good input reaches the import."""
    import subprocess
    import sys

    fake = tmp_path / "fake"
    (fake / "torch").mkdir(parents=True)
    (fake / "torch" / "__init__.py").write_text("raise ImportError('torch was imported')\n")
    existing = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(fake), existing]))}
    command = [sys.executable, "-m", "stepedit.cli", "edit"]
    out = str(tmp_path / "o.png")
    checkpoint = tmp_path / "ckpt"
    assert main(["convert", MODEL, str(checkpoint), "--to", "diffusers"]) == 0
    cases = [
        ([str(source), "x", "-o", out, "--steps", "0", "--model", MODEL], 2),
        ([str(tmp_path / "missing.png"), "x", "-o", out, "--model", MODEL], 2),
        ([str(source), "x", "-o", str(tmp_path / "o.bmp"), "--model", MODEL], 2),
        ([str(source), "x", "-o", out, "--model", MODEL, "--thinking"], 2),
        ([str(source), "x", "-o", out, "--model", MODEL, "--optimize", "warp-speed"], 2),
        # the release is read from the checkpoint's files, before loading it
        ([str(source), "x", "-o", out, "--model", str(checkpoint), "--thinking"], 2),
        # a checkpoint with parts missing is named before anything loads
        ([str(source), "x", "-o", out, "--model", str(tmp_path)], 1),
    ]
    for case, code in cases:
        done = subprocess.run(
            [*command, *case], capture_output=True, text=True, env=env, timeout=60
        )
        assert done.returncode == code, (case, done.stderr)
        assert "torch was imported" not in done.stderr and "Traceback" not in done.stderr
    good = subprocess.run(
        [*command, str(source), "x", "-o", out, "--model", MODEL],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert "torch was imported" in good.stderr


def test_missing_image_and_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "o.png")
    assert main(["edit", str(tmp_path / "nope.png"), "x", "-o", out, *FAST]) == 2
    assert "image not found" in capsys.readouterr().err
    (tmp_path / "a.png").write_bytes(b"not an image")
    assert main(["edit", str(tmp_path / "a.png"), "x", "-o", out, *FAST]) == 2
    assert "not a readable image" in capsys.readouterr().err


def test_batch_jsonl_and_csv(source: Path, tmp_path: Path) -> None:
    jsonl = tmp_path / "pairs.jsonl"
    rows = [
        {"image": source.name, "prompt": "add a hat", "seed": 1},
        {"image": str(source), "instruction": "make it red", "seed": 2, "n": 2},
    ]
    jsonl.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    out_dir = tmp_path / "out"
    assert main(["edit", "--batch", str(jsonl), "-o", str(out_dir), *FAST]) == 0
    results = [json.loads(line) for line in (out_dir / "results.jsonl").read_text().splitlines()]
    assert [r["seeds"] for r in results] == [[1], [2, 3]]
    for result in results:
        for path in result["outputs"]:
            assert Image.open(path).size == (300, 200)

    csv_file = tmp_path / "pairs.csv"
    csv_file.write_text(f"image,prompt,seed\n{source.name},add a hat,5\n")
    assert main(["edit", "--batch", str(csv_file), "-o", str(tmp_path / "csv"), *FAST]) == 0
    assert (tmp_path / "csv" / "0000-cat.png").is_file()


def test_batch_with_a_bad_row_is_refused_before_loading(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text(json.dumps({"image": source.name, "prompt": "x", "steps": 0}) + "\n")
    assert main(["edit", "--batch", str(jsonl), "-o", str(tmp_path / "out"), *FAST]) == 2
    assert "row 1" in capsys.readouterr().err


@pytest.mark.slow
def test_console_script_end_to_end(source: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "out.png"
    command = [sys.executable, "-m", "stepedit.cli", "edit", str(source)]
    done = subprocess.run(
        [*command, "add a hat", "-o", str(out), *FAST],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert Image.open(out).size == (300, 200)
    bad = subprocess.run(
        [*command, "x", "-o", str(out), "--n", "9", *FAST],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "--n: " in bad.stderr


def test_reasoning_flags_reach_the_pipeline(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.png"
    # v1.1 has no reasoning passes: a clear refusal naming the flag, before loading.
    assert main(["edit", str(source), "add a hat", "-o", str(out), "--thinking", *FAST]) == 2
    assert "--thinking: the reasoning passes need the v1.2 model" in capsys.readouterr().err
    # v1.2 with both passes off is a plain edit.
    v12 = ["--model", "dummy:tiny-v1.2", "--size", "512", "--steps", "2", "--no-progress"]
    args = ["edit", str(source), "add a hat", "-o", str(out), "--no-thinking", "--no-reflection"]
    assert main([*args, *v12]) == 0
    assert Image.open(out).size == (300, 200)


def test_model_version_flag_and_cfg_rescale(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.png"
    args = ["edit", str(source), "add a hat", "-o", str(out), *FAST, "--seed", "4"]
    assert main([*args, "--model-version", "v1.1", "--cfg-rescale", "every_step"]) == 0
    # --version is kept as an alias of --model-version; a contradicting release is refused.
    assert main([*args, "--version", "v1.2"]) == 1
    assert "v1.2" in capsys.readouterr().err
