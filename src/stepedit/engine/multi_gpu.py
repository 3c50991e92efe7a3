"""Several GPUs in one `stepedit serve` or `stepedit worker`: `--gpus 0,1 [--parallel MODE]`.

- `replicas` (the default): one pipeline per GPU, each edit on one of them, as many edits at a
  time as GPUs. `serve`: one worker loop per GPU claims from the one job service, its model in a
  process of its own (`EditorProcess`). `worker`: one fleet worker process per GPU, started and
  stopped together (`supervise_workers`).
- `cfg`: one pipeline over exactly two GPUs; every edit's positive and negative halves run side
  by side (`stepedit.acceleration.cfg_parallel`). The process that claims the jobs is the
  leader (the first GPU: the MLLM, the VAE, the sampler, half of each DiT call); a follower
  process holds only the DiT on the second (`load_cfg_editor`).

Replicas is the default: it multiplies throughput on any number of GPUs and a failing GPU takes
one replica with it. cfg shortens each edit (the DiT is most of it) for a server that mostly runs
one edit at a time (not v1.2's: see docs/performance.md, Several GPUs).

The choice is parsed and checked before anything loads (`stepedit.gpus`). Tests run every
path on the CPU with the hidden `--device-type cpu`: the indices then name CPU processes and
the pair talks over gloo.
"""

from __future__ import annotations

import atexit
import gc
import logging
import multiprocessing.util
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import TYPE_CHECKING, Any

from PIL import Image

from stepedit.engine.editor import Editor, EditorResult, ProgressCallback, loaded_facts
from stepedit.engine.editor_process import (
    EditorProcess,
    configure_child_logging,
    exit_with_parent,
    prepare_child,
    root_log_level,
    spawn_child,
)
from stepedit.engine.loading import load_editor
from stepedit.engine.safety import SafetyChecker
from stepedit.engine.worker import InProcessWorker
from stepedit.gpus import GpuPlan
from stepedit.jobs.health import HealthStatus, ModelFacts, ModelHealth
from stepedit.request import EditRequest
from stepedit.settings import Settings

if TYPE_CHECKING:
    from torch import nn

    from stepedit.acceleration.cfg_parallel import CFGLeaderDiT, FollowerLink, PairAddress, Select
    from stepedit.distributed.config import DistributedSettings
    from stepedit.engine.pipeline_editor import PipelineEditor
    from stepedit.jobs.service import JobService
    from stepedit.pipeline import EditPipeline

logger = logging.getLogger(__name__)

# A DiT call the follower leaves unanswered this long ends the pair (the leader goes on alone).
# Generous: a call takes well under a second on a GPU; this only catches a hung follower.
CALL_TIMEOUT_S = 300.0
PAIR_TIMEOUT_S = 600.0  # the pair's rendezvous, and the backstop of each collective


def on_device(settings: Settings, device: str) -> Any:
    """`settings` (of whichever settings class) for one device."""
    return settings.model_copy(update={"device": device})


# --------------------------------------------------------------------------- serve


@dataclass
class _Slot:
    """One pipeline of the server (a GPU's replica, or the cfg pair) and its worker loop."""

    label: str
    open: Callable[[], Editor]
    health: ModelHealth
    editor: Editor | None = None

    def load(self) -> Editor:
        """Runs in the slot's worker thread (as `InProcessWorker` loads its editor)."""
        self.editor = self.open()
        return self.editor

    def describe(self) -> dict[str, Any]:
        body: dict[str, Any] = {"device": self.label, "status": self.health.status.value}
        reason = self.health.health().reason
        if reason is not None:
            body["reason"] = reason
        describe = getattr(self.editor, "describe", None)
        if callable(describe):
            body.update(describe())
        return body

    def close(self) -> None:
        close = getattr(self.editor, "close", None)
        if callable(close):
            close()


class MultiGpuWorkers:
    """`stepedit serve --gpus`: one `InProcessWorker` per pipeline, all claiming from the one
    job service (its guarded claims give each job to one of them). The service's model health
    is theirs combined: failed as soon as one failed (naming its device), ready once all are.
    `describe()` is what /health shows under "parallel"."""

    def __init__(
        self,
        service: JobService,
        settings: Settings,
        plan: GpuPlan,
        *,
        load_safety: Callable[[], SafetyChecker | None] = lambda: None,
    ) -> None:
        self.plan = plan
        self.service = service
        declared = service.model.model_version
        opens: list[tuple[str, Callable[[], Editor]]]
        if plan.mode == "cfg":
            label = "+".join(plan.labels)
            opens = [(label, partial(load_cfg_editor, settings, plan))]
        else:
            opens = [
                (label, partial(_open_replica, on_device(settings, device), label))
                for device, label in zip(plan.devices, plan.labels, strict=True)
            ]
        self.slots = [_Slot(label, open_, ModelHealth(declared)) for label, open_ in opens]
        self._combine = threading.Lock()
        for slot in self.slots:
            slot.health.on_change(self._combine_health)
        service.model.add_details(self.describe)
        shared_safety = _load_once(load_safety)
        self.workers = [
            InProcessWorker(
                service,
                slot.load,
                load_safety=shared_safety,
                nsfw_filter=settings.nsfw_filter,
                shutdown_grace_s=settings.shutdown_grace_s,
                health=slot.health,
            )
            for slot in self.slots
        ]

    def start(self) -> None:
        logger.info("several GPUs: %s", self.plan.summary())
        for worker in self.workers:
            worker.start()

    def begin_stop(self) -> None:
        for worker in self.workers:
            worker.begin_stop()

    def stop(self) -> None:
        """Every worker stops as `InProcessWorker.stop` says (at once, so their graces run
        side by side), then every pipeline's processes. Idempotent."""
        stopping = [threading.Thread(target=w.stop, daemon=True) for w in self.workers]
        for thread in stopping:
            thread.start()
        for thread in stopping:
            thread.join()
        for slot in self.slots:
            slot.close()

    def describe(self) -> dict[str, Any]:
        return {"parallel": {**self.plan.to_dict(), "workers": [s.describe() for s in self.slots]}}

    def _combine_health(self) -> None:
        with self._combine:
            target = self.service.model
            states = [(slot, slot.health.health()) for slot in self.slots]
            failed = [(s, h) for s, h in states if h.status is HealthStatus.FAILED]
            if failed:
                slot, health = failed[0]
                target.failed(f"{slot.label}: {health.reason}")
            elif any(h.status is HealthStatus.UNAVAILABLE for _, h in states):
                target.stopped()
            elif all(h.is_ready for _, h in states):
                first = self.slots[0].editor
                facts = loaded_facts(first)[1] if first is not None else ModelFacts()
                target.loaded(states[0][1].model_version, facts)


def _open_replica(settings: Settings, label: str) -> EditorProcess:
    return EditorProcess.start(partial(load_editor, settings), label)


def _load_once(
    load: Callable[[], SafetyChecker | None],
) -> Callable[[], SafetyChecker | None]:
    """One safety checker for every worker loop (it runs on the CPU, in this process)."""
    lock = threading.Lock()
    loaded: list[SafetyChecker | None] = []

    def shared() -> SafetyChecker | None:
        with lock:
            if not loaded:
                loaded.append(load())
            return loaded[0]

    return shared


# --------------------------------------------------------------------------- cfg


@dataclass
class CFGEditor:
    """The leader's `Editor`: a `PipelineEditor` whose DiT splits each CFG batch with the
    follower; it tells the follower each edit's LoRA choices and logs the calls it ran alone."""

    editor: PipelineEditor
    dit: CFGLeaderDiT
    link: FollowerLink
    notes: list[str] = field(default_factory=list)
    edits: int = 0

    @property
    def model_version(self) -> str:
        return self.editor.model_version

    def facts(self) -> ModelFacts:
        return self.editor.facts()

    def edit(
        self,
        request: EditRequest,
        image: Image.Image,
        on_progress: ProgressCallback,
        mask: Image.Image | None = None,
    ) -> EditorResult:
        self.edits += 1
        split, alone = self.dit.split_calls, self.dit.leader_calls
        self.dit.selection = request.loras
        try:
            return self.editor.edit(request, image, on_progress, mask=mask)
        finally:
            self.dit.selection = None
            ran_alone = self.dit.leader_calls - alone
            if ran_alone:
                why = (
                    "the follower is lost"
                    if not self.link.is_up
                    else "batches of 1: no guidance, or v1.2 prompts of different lengths"
                )
                total = ran_alone + self.dit.split_calls - split
                logger.info(
                    "CFG-parallel: %d of %d DiT calls of this edit ran on the leader alone (%s)",
                    ran_alone,
                    total,
                    why,
                )

    def describe(self) -> dict[str, Any]:
        return {
            "edits": self.edits,
            "follower": self.link.state,
            "follower_pid": self.link.pid,
            "dit_calls": {"split": self.dit.split_calls, "leader_only": self.dit.leader_calls},
            "notes": list(self.notes),
        }

    def close(self) -> None:
        self.link.close()


def load_cfg_editor(settings: Settings, plan: GpuPlan) -> CFGEditor:
    """Start the follower on the plan's second device, load the leader's pipeline on the first
    meanwhile, form the pair; raises (the follower stopped) when either cannot load."""
    import torch

    from stepedit.acceleration.cfg_parallel import (
        CFGLeaderDiT,
        CFGParallelDiT,
        FollowerLink,
        open_pair_store,
    )
    from stepedit.engine.pipeline_editor import PipelineEditor

    leader_device, follower_device = plan.devices
    leader = torch.device(leader_device)
    if leader.type == "cuda":
        torch.cuda.set_device(leader)
    store, address = open_pair_store(plan.backend, PAIR_TIMEOUT_S)
    follower_settings = on_device(settings, follower_device)
    process, conn = spawn_child(
        _follower_main,
        (address, follower_settings, f"{plan.labels[1]} follower", root_log_level()),
        "stepedit-cfg-follower",
    )
    link = FollowerLink(conn, process, leader, call_timeout_s=CALL_TIMEOUT_S)
    # A backstop to the owner's close(): at exit, stop the follower before multiprocessing's
    # exit handler joins it (forever). That handler moves to the front of the exit queue when
    # multiprocessing's logger is first made, so make it now, before registering.
    multiprocessing.util.get_logger()
    atexit.register(link.close)
    try:
        editor = PipelineEditor.from_settings(on_device(settings, leader_device))
        link.wait_ready()
        link.join(store, address)
    except BaseException:
        link.close()
        raise
    notes = prepare_leader(editor.pipeline)
    dit = CFGLeaderDiT(CFGParallelDiT(editor.pipeline.dit), link)
    editor.pipeline.dit = dit
    logger.info("%s; follower process %s", plan.summary(), link.pid)
    for note in notes:
        logger.info("CFG-parallel: %s", note)
    if editor.model_version == "v1.2":
        logger.warning(
            "CFG-parallel: v1.2 encodes its prompts unpadded, so the positive and negative "
            "rows differ in length and most DiT calls run on the leader alone (--parallel "
            "replicas serves v1.2 better)"
        )
    return CFGEditor(editor, dit, link, notes)


def prepare_leader(pipeline: EditPipeline) -> list[str]:
    """What the leader's pipeline changes for CFG-parallel; returns a note per change."""
    notes = []
    if not pipeline.batch_cfg:
        pipeline.batch_cfg = True
        notes.append(
            "batch_cfg on: the positive and negative rows go to the DiT as one batch, which "
            "the two GPUs split (the same result up to float rounding)"
        )
    if pipeline.region_settings.accelerate:
        pipeline.region_settings = replace(pipeline.region_settings, accelerate=False)
        notes.append(
            "+regions off: its region steps run the DiT's blocks themselves, which the pair "
            "does not split"
        )
    return notes


def _follower_main(
    conn: Connection, address: PairAddress, settings: Settings, label: str, log_level: int
) -> None:
    prepare_child(label, log_level)
    import torch

    from stepedit.acceleration.cfg_parallel import run_follower

    device = torch.device(settings.device or "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    sys.exit(run_follower(conn, address, device, partial(_follower_dit, settings)))


def _follower_dit(settings: Settings) -> tuple[nn.Module, Select]:
    """The follower's DiT, loaded and sped up as the leader's (the same settings, on its own
    device); the rest of the pipeline (MLLM, VAE) is dropped once loaded."""
    import torch

    from stepedit.engine.pipeline_editor import PipelineEditor

    pipeline = PipelineEditor.from_settings(settings).pipeline
    if pipeline.offload:  # loaded on the host and left there by the speed switches: it serves
        pipeline.dit.to(pipeline.device)
    dit, loras, device = pipeline.dit, pipeline.loras, pipeline.device
    del pipeline
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return dit, loras.selected


# --------------------------------------------------------------------------- worker


def run_gpu_workers(settings: DistributedSettings, plan: GpuPlan, threads: int | None) -> int:
    """`stepedit worker --gpus`: a cfg pair in this process, or one worker process per GPU."""
    logger.info("several GPUs: %s", plan.summary())
    if plan.mode == "cfg":
        from stepedit.distributed.worker_process import run_worker

        if threads:
            _set_threads(threads)
        return run_worker(
            settings,
            load=partial(load_cfg_editor, plan=plan),
            device_label=f"cfg {'+'.join(plan.labels)}",
        )
    return supervise_workers(settings, plan, threads)


def supervise_workers(settings: DistributedSettings, plan: GpuPlan, threads: int | None) -> int:
    """One fleet worker process per GPU. SIGTERM/SIGINT here reach each of them once (each
    finishes or hands back its job, as a lone worker does); one that exits by itself stops the
    others, and this process exits with its status, so a supervisor restarts the unit."""
    children: list[tuple[str, BaseProcess, Connection]] = []
    for device, label in zip(plan.devices, plan.labels, strict=True):
        process, conn = spawn_child(
            _worker_main,
            (on_device(settings, device), label, root_log_level(), threads),
            f"stepedit-worker-{label}",
        )
        children.append((label, process, conn))
    stopping = threading.Event()

    def forward(signum: int, _frame: FrameType | None) -> None:
        stopping.set()
        for _label, process, _conn in children:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _wait_for_workers(children, stopping, forward)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for _label, _process, conn in children:
            conn.close()


def _wait_for_workers(
    children: list[tuple[str, BaseProcess, Connection]],
    stopping: threading.Event,
    forward: Callable[[int, FrameType | None], None],
) -> int:
    pending = [(label, process) for label, process, _conn in children]
    status = 0
    while pending:
        ready = wait([process.sentinel for _label, process in pending])
        for label, process in [c for c in pending if c[1].sentinel in ready]:
            pending.remove((label, process))
            process.join()
            code = process.exitcode or 0
            if stopping.is_set():
                status = status or max(code, 0)
                continue
            logger.error("the worker on %s exited (code %d): stopping the others", label, code)
            status = code if code > 0 else 1
            forward(signal.SIGTERM, None)
    return status


def _worker_main(
    _conn: Connection, settings: DistributedSettings, label: str, log_level: int, threads: int
) -> None:
    os.setpgrp()  # a terminal's Ctrl-C reaches the supervisor, which passes it on once
    configure_child_logging(label, log_level)
    exit_with_parent()
    if threads:
        _set_threads(threads)
    from stepedit.distributed.worker_process import run_worker

    sys.exit(run_worker(settings, device_label=label))


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
