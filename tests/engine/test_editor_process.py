"""`EditorProcess`: an editor in a child process behaves as it does in one process (progress,
a stop at the next step, its errors), and a child that dies fails one edit, not the next."""

from __future__ import annotations

import os
import signal
from functools import partial

import pytest
from PIL import Image

from stepedit.engine.editor import FakeEditor
from stepedit.engine.editor_process import EditorCrashed, EditorLoadFailed, EditorProcess
from stepedit.engine.loading import load_editor
from stepedit.errors import InvalidInput
from stepedit.request import EditRequest
from stepedit.settings import Settings

pytestmark = pytest.mark.slow

REQUEST = EditRequest(prompt="invert", seed=3, num_inference_steps=4)
IMAGE = Image.new("RGB", (8, 8), (10, 20, 30))


class Stop(Exception):
    pass


def refusing_editor() -> FakeEditor:
    return FakeEditor(fail_with=InvalidInput("prompt: not today", param="prompt"))


def unloadable_editor() -> FakeEditor:
    raise FileNotFoundError("no weights at /nowhere")


@pytest.fixture
def editor() -> EditorProcess:
    started = EditorProcess.start(partial(load_editor, Settings(model="fake:0.05")), "cpu:7")
    yield started
    started.close()


def test_the_edit_runs_in_the_child_with_every_step_reported(editor: EditorProcess) -> None:
    steps: list[tuple[int, int, str]] = []
    result = editor.edit(REQUEST, IMAGE, lambda *step: steps.append(step))
    assert steps == [(i, 4, "denoise") for i in range(1, 5)]
    assert result.images[0].getpixel((0, 0)) == (245, 235, 225)  # the fake editor inverts
    assert result.seeds == [3] and editor.pid != os.getpid()
    assert editor.describe() == {"pid": editor.pid, "edits": 1}


def test_a_mask_reaches_the_child(editor: EditorProcess) -> None:
    mask = Image.new("L", (8, 8), 0)
    mask.paste(255, (0, 0, 4, 8))
    result = editor.edit(REQUEST, IMAGE, lambda *step: None, mask=mask)
    assert result.images[0].getpixel((0, 0)) == (245, 235, 225)
    assert result.images[0].getpixel((7, 0)) == (10, 20, 30)  # outside the mask: unchanged


def test_a_progress_callback_that_raises_stops_the_edit_at_that_step(
    editor: EditorProcess,
) -> None:
    seen: list[int] = []

    def cancel_at_two(step: int, _total: int, _stage: str) -> None:
        seen.append(step)
        if step == 2:
            raise Stop

    with pytest.raises(Stop):
        editor.edit(REQUEST, IMAGE, cancel_at_two)
    assert seen == [1, 2]
    pid = editor.pid
    assert editor.edit(REQUEST, IMAGE, lambda *step: None).seeds == [3]  # in step again
    assert editor.pid == pid


def test_the_editors_own_error_comes_back_as_itself() -> None:
    editor = EditorProcess.start(refusing_editor, "cpu:7")
    try:
        with pytest.raises(InvalidInput) as raised:
            editor.edit(REQUEST, IMAGE, lambda *step: None)
        assert raised.value.code == "invalid_request" and raised.value.param == "prompt"
    finally:
        editor.close()


def test_a_child_that_dies_fails_that_edit_and_is_started_again(editor: EditorProcess) -> None:
    first = editor.pid
    assert first is not None

    def die_at_two(step: int, _total: int, _stage: str) -> None:
        if step == 2:
            os.kill(first, signal.SIGKILL)

    with pytest.raises(EditorCrashed, match="cpu:7 worker process exited"):
        editor.edit(REQUEST, IMAGE, die_at_two)
    assert editor.edit(REQUEST, IMAGE, lambda *step: None).seeds == [3]
    assert editor.pid not in (None, first)


def test_a_model_that_cannot_load_is_reported_with_its_reason() -> None:
    with pytest.raises(EditorLoadFailed, match="cpu:7: FileNotFoundError: no weights"):
        EditorProcess.start(unloadable_editor, "cpu:7")


def test_close_ends_the_child_and_signals_for_the_server_do_not(editor: EditorProcess) -> None:
    process = editor._process
    assert process is not None
    os.kill(process.pid or 0, signal.SIGTERM)  # as a service manager sends every process
    assert editor.edit(REQUEST, IMAGE, lambda *step: None).seeds == [3]
    editor.close()
    assert not process.is_alive() and process.exitcode == 0
