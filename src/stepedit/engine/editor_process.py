"""An `Editor` whose model lives in a child process: one process per GPU for
`stepedit serve --gpus 0,1 --parallel replicas`, while the worker loops that claim the jobs stay
in the server's process (one job service, one database writer, the job events in-process).

A process per GPU rather than a thread: a GPU fault or a crash ends one replica, not the server;
and no two models share one interpreter (its lock, torch.compile's global state).

The conversation on the pipe, parent first:

    ("edit", request, image, mask)  ->  ("progress", step, total, stage), one per step; the
                                        child then waits for ("continue",) or ("stop",)
                                    ->  ("result", EditorResult), ("error", exception) or
                                        ("stopped",)
    ("close",)                      ->  the child exits

So a cancel, a shutdown's hand-back or a time limit, raised by the parent's progress callback,
stops the edit at its next step exactly as in one process. The child ignores SIGINT and SIGTERM
(the server decides what becomes of the edit it runs: finished or handed back on a shutdown,
never lost to a signal meant for the server) and exits when told, when its pipe closes, or when
its parent process is gone. A child that dies during an edit fails that job (`EditorCrashed`,
"worker_lost") and is started again for the next one.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import pickle
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing import get_context
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

from PIL import Image

from stepedit.engine.editor import Editor, EditorResult, ProgressCallback, loaded_facts
from stepedit.errors import StepEditError
from stepedit.jobs.health import ModelFacts, describe_failure
from stepedit.request import EditRequest

logger = logging.getLogger(__name__)

CLOSE_WAIT_S = 30.0


class EditorCrashed(StepEditError):
    """The process running the edit exited before answering."""

    code = "worker_lost"


class EditorLoadFailed(RuntimeError):
    """The child process could not load the model (the message says why)."""


# --------------------------------------------------------------------------- child processes


def spawn_child(
    target: Callable[..., Any], args: tuple[Any, ...], name: str
) -> tuple[BaseProcess, Connection]:
    """Start `target(conn, *args)` in a fresh interpreter ("spawn": CUDA cannot be forked);
    returns the process and the parent's end of the pipe. Not a daemon: a model's compiler may
    start processes of its own."""
    context = get_context("spawn")
    parent_end, child_end = context.Pipe()
    process = context.Process(target=target, args=(child_end, *args), name=name)
    process.start()
    child_end.close()  # so the parent reads EOF once the child is gone
    return process, parent_end


def prepare_child(label: str, log_level: int) -> None:
    """First thing in a child that serves its parent: its log lines carry `label`, the signals a
    terminal or a service manager sends every process are left to the parent, and it exits
    with its parent."""
    configure_child_logging(label, log_level)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _left_to_parent)  # a handler, not SIG_IGN: exec'd children reset it
    exit_with_parent()


def configure_child_logging(label: str, log_level: int) -> None:
    logging.basicConfig(
        level=log_level,
        format=f"%(asctime)s %(levelname)s [{label}] %(name)s: %(message)s",
        force=True,
    )


def exit_with_parent(poll_s: float = 1.0) -> None:
    """A thread that ends this process once its parent is gone (re-parented: the parent died
    without closing the pipe, e.g. killed)."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _left_to_parent(signum: int, _frame: FrameType | None) -> None:
    logger.info("signal %d: left to the parent process, which stops this one", signum)


def root_log_level() -> int:
    return logging.getLogger().getEffectiveLevel()


def stop_child(process: BaseProcess, timeout_s: float) -> None:
    """Wait up to `timeout_s` for `process` to exit, then kill it."""
    process.join(timeout_s)
    if process.is_alive():
        process.kill()
        process.join(10.0)


# --------------------------------------------------------------------------- the parent's side


class EditorProcess:
    """An `Editor` in a child process; `start` returns once the model is loaded there."""

    def __init__(self, load: Callable[[], Editor], label: str) -> None:
        self._load = load  # picklable: it runs in the child
        self.label = label
        self.model_version: str | None = None
        self._facts = ModelFacts()
        self._process: BaseProcess | None = None
        self._conn: Connection | None = None
        self._lock = threading.Lock()  # one edit at a time, as an editor runs them
        self.edits = 0

    @classmethod
    def start(cls, load: Callable[[], Editor], label: str) -> EditorProcess:
        editor = cls(load, label)
        editor._spawn()
        atexit.register(editor.close)  # before multiprocessing's own exit joins the child
        return editor

    def facts(self) -> ModelFacts:
        return self._facts

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def edit(
        self,
        request: EditRequest,
        image: Image.Image,
        on_progress: ProgressCallback,
        mask: Image.Image | None = None,
    ) -> EditorResult:
        with self._lock:
            self.edits += 1
            if self._process is None or not self._process.is_alive():
                self._discard()
                logger.warning("%s: starting its process again", self.label)
                self._spawn()
            self._send(("edit", request, image, mask))
            in_step = False
            try:
                result = self._follow(on_progress)
                in_step = True
                return result
            except EditorCrashed:
                self._discard()
                raise
            except _EndedInStep as ended:
                in_step = True
                raise ended.error from None
            finally:
                if not in_step:  # left mid-conversation (the parent itself was interrupted)
                    self._discard()

    def close(self) -> None:
        """Stop the child (idempotent). An edit still running after CLOSE_WAIT_S (its worker
        did not stop) ends with EditorCrashed: its process is killed."""
        atexit.unregister(self.close)
        if not self._lock.acquire(timeout=CLOSE_WAIT_S):
            process = self._process
            if process is not None and process.is_alive():
                process.kill()
            return
        try:
            if self._conn is not None and self._process is not None and self._process.is_alive():
                with contextlib.suppress(OSError):
                    self._conn.send(("close",))
                stop_child(self._process, CLOSE_WAIT_S)
            self._discard()
        finally:
            self._lock.release()

    def describe(self) -> dict[str, Any]:
        """For /health: the process and how many edits it began."""
        return {"pid": self.pid, "edits": self.edits}

    # ------------------------------------------------------------------ the conversation

    def _spawn(self) -> None:
        self._process, self._conn = spawn_child(
            _serve_edits, (self._load, self.label, root_log_level()), f"stepedit-{self.label}"
        )
        kind, *payload = self._receive("while loading the model")
        if kind != "ready":
            self._discard()
            raise EditorLoadFailed(f"{self.label}: {payload[0]}")
        self.model_version, self._facts = payload
        logger.info("%s: model loaded in process %s", self.label, self._process.pid)

    def _follow(self, on_progress: ProgressCallback) -> EditorResult:
        while True:
            kind, *payload = self._receive("during the edit")
            if kind == "progress":
                try:
                    on_progress(*payload)
                except BaseException as exc:
                    self._send(("stop",))
                    self._drain()
                    raise _EndedInStep(exc) from exc
                self._send(("continue",))
            elif kind == "result":
                result: EditorResult = payload[0]
                return result
            elif kind == "error":
                raise _EndedInStep(payload[0])
            else:
                raise EditorCrashed(f"{self.label}: unexpected message {kind!r} from its process")

    def _drain(self) -> None:
        """After ("stop",): read up to the edit's end (its last answer is not needed)."""
        while True:
            kind, *_ = self._receive("while stopping the edit")
            if kind in ("stopped", "result", "error"):
                return
            self._send(("stop",))

    def _send(self, message: tuple[Any, ...]) -> None:
        assert self._conn is not None
        try:
            self._conn.send(message)
        except OSError:
            raise self._crashed("before it could be sent the edit") from None

    def _receive(self, when: str) -> tuple[Any, ...]:
        assert self._conn is not None and self._process is not None
        ready = wait([self._conn, self._process.sentinel])
        if self._conn in ready or self._conn.poll():
            try:
                message: tuple[Any, ...] = self._conn.recv()
                return message
            except (EOFError, OSError):  # EOF, or a reset when it died with our message unread
                pass
        raise self._crashed(when)

    def _crashed(self, when: str) -> EditorCrashed:
        assert self._process is not None
        self._process.join(5.0)
        code = self._process.exitcode
        logger.error("%s: its process exited with code %s %s", self.label, code, when)
        return EditorCrashed(f"the {self.label} worker process exited (code {code}) {when}")

    def _discard(self) -> None:
        """Forget the child (killed if still running): the next edit starts a new one."""
        if self._process is not None and self._process.is_alive():
            self._process.kill()
            self._process.join(10.0)
        if self._conn is not None:
            self._conn.close()
        self._process, self._conn = None, None


class _EndedInStep(Exception):
    """The edit ended with `error` and the child is waiting for the next one."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


# --------------------------------------------------------------------------- the child's side


class _Stopped(Exception):
    """The parent said stop (raised from the child's progress callback)."""


def _serve_edits(conn: Connection, load: Callable[[], Editor], label: str, log_level: int) -> None:
    prepare_child(label, log_level)
    try:
        editor = load()
    except BaseException as exc:
        logger.exception("the model could not be loaded")
        conn.send(("failed", describe_failure(exc)))
        return
    version, facts = loaded_facts(editor)
    conn.send(("ready", version, facts))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message[0] != "edit":
            return
        _, request, image, mask = message
        conn.send(_run_edit(conn, editor, request, image, mask))


def _run_edit(
    conn: Connection,
    editor: Editor,
    request: EditRequest,
    image: Image.Image,
    mask: Image.Image | None,
) -> tuple[Any, ...]:
    def on_progress(step: int, total_steps: int, stage: str) -> None:
        conn.send(("progress", step, total_steps, stage))
        if conn.recv()[0] != "continue":
            raise _Stopped

    try:
        return ("result", editor.edit(request, image, on_progress, mask=mask))
    except _Stopped:
        return ("stopped",)
    except Exception as exc:
        if not isinstance(exc, StepEditError):
            logger.exception("the edit failed")
        return ("error", _portable(exc))


def _portable(exc: BaseException) -> BaseException:
    """`exc` if it survives the pipe (the parent reports it as it would in one process), else
    a RuntimeError naming it."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(describe_failure(exc))
    return exc
