"""`--gpus` / `--parallel`: the plan, and the usage error a bad choice gets before anything
loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from stepedit.cli import main
from stepedit.gpus import GpuChoiceError, GpuPlan, parse_gpu_indices, plan_gpus


def four_gpus() -> int:
    return 4


def test_indices_are_parsed_in_the_order_given() -> None:
    assert parse_gpu_indices("0,1") == (0, 1)
    assert parse_gpu_indices(" 3, 1 ") == (3, 1)


@pytest.mark.parametrize("text", ["", "0,", ",1", "0;1", "a,b", "-1", "0.5", "cuda:0", "٣"])
def test_indices_that_are_not_a_comma_separated_list_are_refused(text: str) -> None:
    with pytest.raises(GpuChoiceError, match="separated by commas"):
        parse_gpu_indices(text)


def test_an_index_named_twice_is_refused() -> None:
    with pytest.raises(GpuChoiceError, match="GPU 1 is named more than once"):
        parse_gpu_indices("1,0,1")


def test_replicas_is_the_default_and_each_index_is_a_device() -> None:
    plan = plan_gpus("2,0", None, device_count=four_gpus)
    assert plan == GpuPlan("replicas", (2, 0))
    assert plan.devices == ("cuda:2", "cuda:0") and plan.backend == "nccl"
    assert plan.to_dict() == {"mode": "replicas", "devices": ["cuda:2", "cuda:0"]}


def test_cfg_takes_exactly_two_gpus() -> None:
    assert plan_gpus("0,1", "cfg", device_count=four_gpus) == GpuPlan("cfg", (0, 1))
    for gpus in ("0", "0,1,2", "0,1,2,3"):
        with pytest.raises(GpuChoiceError, match="exactly 2 GPUs"):
            plan_gpus(gpus, "cfg", device_count=four_gpus)


def test_an_index_the_machine_lacks_is_refused_naming_what_it_has() -> None:
    with pytest.raises(GpuChoiceError, match=r"no GPU 4, 7 .* 4 CUDA devices \(0-3"):
        plan_gpus("0,4,7", None, device_count=four_gpus)


def test_no_cuda_device_at_all_is_refused() -> None:
    with pytest.raises(GpuChoiceError, match="no CUDA device to run on"):
        plan_gpus("0", None, device_count=lambda: 0)


def test_flags_that_do_not_go_together_are_refused() -> None:
    assert plan_gpus(None, None) is None
    with pytest.raises(GpuChoiceError, match="--parallel needs --gpus"):
        plan_gpus(None, "cfg")
    with pytest.raises(GpuChoiceError, match="--gpus or --device, not both"):
        plan_gpus("0,1", None, device="cuda:1", device_count=four_gpus)


def test_cpu_device_type_names_processes_on_the_cpu() -> None:
    plan = plan_gpus("0,1", "cfg", device_type="cpu")
    assert plan is not None
    assert plan.devices == ("cpu", "cpu") and plan.labels == ("cpu:0", "cpu:1")
    assert plan.backend == "gloo"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--gpus", "0,0"], "named more than once"),
        (["--gpus", "zero"], "separated by commas"),
        (["--gpus", "0,1,2", "--parallel", "cfg", "--device-type", "cpu"], "exactly 2 GPUs"),
        (["--gpus", "0,1"], "no CUDA device to run on"),  # this machine has none
        (["--gpus", "0,1", "--device", "cpu"], "not both"),
        (["--parallel", "cfg"], "--parallel needs --gpus"),
        (["--gpus", "0,1", "--parallel", "cfg", "--device-type", "cpu"], "a model with a DiT"),
    ],
)
@pytest.mark.parametrize("command", ["serve", "worker"])
def test_serve_and_worker_refuse_a_bad_choice_before_loading(
    command: str,
    argv: list[str],
    message: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if "no CUDA" in message:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a CUDA device")
    monkeypatch.setenv("STEPEDIT_ALLOW_CPU", "1")
    common = ["--model", "fake", "--data-dir", str(tmp_path / "data")]
    if command == "worker":
        common += ["--queue-url", "redis://127.0.0.1:1/0"]
    assert main([command, *common, *argv]) == 2
    assert message in caplog.text
    assert not (tmp_path / "data").exists()  # nothing was set up


def test_an_api_node_takes_no_gpus(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    argv = ["serve", "--queue-url", "redis://127.0.0.1:1/0", "--gpus", "0", "--device-type", "cpu"]
    assert main([*argv, "--data-dir", str(tmp_path / "data")]) == 2
    assert "an API node" in caplog.text
