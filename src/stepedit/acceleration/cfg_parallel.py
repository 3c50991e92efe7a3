"""CFG-parallel on two GPUs: one rank runs the positive-prompt half of the batch, one the negative.

`CFGParallelDiT` wraps a DiT and is called exactly like it, with the batched-CFG layout the
sampler uses (`denoise(..., batch_cfg=True)`: the B positive rows, then the B negative rows).
Each rank computes its half and an all-gather returns the full [2B, ...] prediction to both,
so the Euler update, and so the result, is the same as on one device. Two ways to run it:

- SPMD, `stepedit bench --cfg-parallel` under `torchrun --nproc-per-node 2` (NCCL on GPUs,
  gloo on CPU for tests): both ranks run the same program (`init_cfg_parallel`).
- Leader and follower, `stepedit serve|worker --gpus 0,1 --parallel cfg`: only the leader runs
  the pipeline (encoding, v1.2 reasoning, VAE, the sampler). `CFGLeaderDiT` sends each DiT
  call's inputs to the follower process, which runs the same `CFGParallelDiT` forward over them
  (`serve_follower`), so the follower needs no request, no MLLM and no VAE. Between calls the
  follower waits on a pipe, not in a collective: an idle server has no collective to time out,
  and a leader that leaves an edit between two calls (a cancel, a failure in its own code)
  leaves the pair in step. A follower that dies or stops answering (`FollowerLink`'s watchdog:
  its process sentinel, and `call_timeout_s` per call) is dropped: the call in flight and every
  later one run both halves on the leader, so the edit finishes, one GPU slower.

Per call the follower mirrors what is not in the tensors: inference mode, the leader's autocast
state and the LoRA selection of the edit (`CFGLeaderDiT.selection`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import timedelta
from multiprocessing.connection import Connection, wait
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import Tensor, nn

logger = logging.getLogger(__name__)

WORLD_SIZE = 2
LEADER, FOLLOWER = 0, 1


def init_cfg_parallel(backend: str | None = None) -> torch.device:
    """Join the process group torchrun set up; returns this rank's device.

    With NCCL the rank's GPU (LOCAL_RANK) is made current and bound to the group
    (`device_id`) before the first collective, so NCCL neither guesses the device nor warns.
    """
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    device = torch.device("cpu")
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise RuntimeError("CFG-parallel over NCCL needs CUDA devices")
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        options = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, **options)  # type: ignore[arg-type]
    if dist.get_world_size() != WORLD_SIZE:
        size = dist.get_world_size()
        raise RuntimeError(f"CFG-parallel needs exactly {WORLD_SIZE} ranks, got {size}")
    return device


def _half(value: Any, rank: int, batch: int) -> Any:
    if isinstance(value, Tensor) and value.ndim >= 1 and value.shape[0] == batch:
        return value.chunk(WORLD_SIZE, dim=0)[rank]
    return value


def batch_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """The batch of a DiT call (its `img` argument's first dimension)."""
    img = kwargs["img"] if "img" in kwargs else args[0]
    return int(img.shape[0])


class CFGParallelDiT(nn.Module):
    def __init__(self, dit: nn.Module, group: dist.ProcessGroup | None = None) -> None:
        super().__init__()
        self.dit = dit
        self.group = group

    @property
    def config(self) -> Any:
        return self.dit.config

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        batch = batch_of(args, kwargs)
        if batch % WORLD_SIZE:
            # No guidance (or an odd batch): nothing to split; every rank computes it all.
            out: Tensor = self.dit(*args, **kwargs)
            return out
        local = self.compute_half(args, kwargs, dist.get_rank(self.group))
        return self.gather(local, batch)

    def compute_half(self, args: tuple[Any, ...], kwargs: dict[str, Any], rank: int) -> Tensor:
        """The DiT over `rank`'s half of the batch ([B/2, ...])."""
        batch = batch_of(args, kwargs)
        local_args = [_half(a, rank, batch) for a in args]
        local_kwargs = {k: _half(v, rank, batch) for k, v in kwargs.items()}
        out: Tensor = self.dit(*local_args, **local_kwargs).contiguous()
        return out

    def gather(self, local: Tensor, batch: int) -> Tensor:
        """Every rank's half, in rank order: the [B, ...] prediction."""
        gathered = torch.empty((batch, *local.shape[1:]), dtype=local.dtype, device=local.device)
        if dist.get_backend(self.group) == "nccl":
            dist.all_gather_into_tensor(gathered, local, group=self.group)
        else:
            dist.all_gather(list(gathered.chunk(WORLD_SIZE, dim=0)), local, group=self.group)
        return gathered


# --------------------------------------------------------------------------- leader and follower


@dataclass(frozen=True)
class PairAddress:
    """Where the follower finds the leader's rendezvous store, and how the pair talks."""

    port: int
    backend: str  # "nccl" (GPUs) or "gloo" (CPU, tests)
    timeout_s: float  # of the rendezvous and of each collective (a backstop, see FollowerLink)
    host: str = "127.0.0.1"


def open_pair_store(backend: str, timeout_s: float) -> tuple[dist.TCPStore, PairAddress]:
    """The leader's rendezvous store, on a free port of the loopback interface."""
    store = dist.TCPStore(
        "127.0.0.1",
        0,
        WORLD_SIZE,
        is_master=True,
        timeout=timedelta(seconds=timeout_s),
        wait_for_workers=False,
    )
    return store, PairAddress(store.port, backend, timeout_s)


def join_pair(
    address: PairAddress, rank: int, device: torch.device, store: dist.Store | None = None
) -> None:
    """Make this process rank `rank` of the pair's process group (the default group)."""
    if address.backend == "nccl":
        torch.cuda.set_device(device)
        # The watchdog below aborts the group when the follower dies; NCCL's own error handling
        # would instead tear the whole server down (the torch docs' advice for manual aborts).
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "0")
    if store is None:
        store = dist.TCPStore(
            address.host,
            address.port,
            WORLD_SIZE,
            is_master=False,
            timeout=timedelta(seconds=address.timeout_s),
        )
    options = {"device_id": device} if address.backend == "nccl" else {}
    dist.init_process_group(
        address.backend,
        store=store,
        rank=rank,
        world_size=WORLD_SIZE,
        timeout=timedelta(seconds=address.timeout_s),
        **options,  # type: ignore[arg-type]
    )


@dataclass(frozen=True)
class _TensorSpec:
    shape: tuple[int, ...]
    dtype: torch.dtype


@dataclass(frozen=True)
class _Call:
    """One DiT call as the pipe carries it; the tensors follow as broadcasts, in this order."""

    args: tuple[Any, ...]  # _TensorSpec or a plain value
    kwargs: dict[str, Any]
    selection: Any  # what the follower's `select` gets (the edit's LoRA choices)
    autocast: tuple[str, torch.dtype] | None


class FollowerLost(RuntimeError):
    """The follower is gone or out of step; the leader runs both halves from now on."""


class FollowerProcess(Protocol):
    """What the leader needs of the follower's process (a `multiprocessing.Process`)."""

    @property
    def sentinel(self) -> int: ...

    @property
    def exitcode(self) -> int | None: ...

    @property
    def pid(self) -> int | None: ...

    def is_alive(self) -> bool: ...

    def kill(self) -> None: ...

    def join(self, timeout: float | None = None) -> None: ...


class FollowerLink:
    """The leader's side of its follower: the control pipe, the process group and a watchdog.

    The watchdog thread notices the follower's exit at once (its process sentinel) and stops a
    follower that leaves one call unanswered for `call_timeout_s` (killed, so it exits). Either
    way the link goes down: gloo's pending collective fails on the closed connection, NCCL's is
    aborted (`_abort_process_group`, the only way to end a collective whose peer is gone), and
    the leader, woken, computes the follower's half itself.
    """

    def __init__(
        self,
        conn: Connection,
        process: FollowerProcess,
        device: torch.device,
        *,
        call_timeout_s: float = 300.0,
        poll_s: float = 0.5,
    ) -> None:
        self.conn = conn
        self.process = process
        self.device = device
        self.call_timeout_s = call_timeout_s
        self.poll_s = poll_s
        self._lock = threading.Lock()
        self._state = "starting"  # starting -> ok -> lost: <why> | stopped
        self._backend: str | None = None  # once joined
        self._call_started: float | None = None
        self._closing = threading.Event()
        self._watchdog = threading.Thread(target=self._watch, name="cfg-watchdog", daemon=True)

    # ------------------------------------------------------------------ state

    @property
    def state(self) -> str:
        """The state for /health and the logs: ok, lost: <why>, stopped (or starting)."""
        return self._state

    @property
    def is_up(self) -> bool:
        return self._state == "ok"

    @property
    def pid(self) -> int | None:
        return self.process.pid

    # ------------------------------------------------------------------ start

    def wait_ready(self) -> Any:
        """Block until the follower has loaded its model; returns what it reported. Raises
        FollowerLost with its reason when it failed or exited first."""
        while True:
            ready = wait([self.conn, self.process.sentinel])
            if self.conn in ready:
                try:
                    kind, payload = self.conn.recv()
                except (EOFError, OSError):
                    kind, payload = "failed", None
                if kind == "ready":
                    return payload
                self.process.join(5.0)
                raise FollowerLost(payload or f"exited with code {self.process.exitcode}")
            if not self.conn.poll():
                self.process.join(5.0)
                raise FollowerLost(f"exited with code {self.process.exitcode}")

    def join(self, store: dist.Store, address: PairAddress) -> None:
        """Both loaded: form the process group (the follower joins on this message)."""
        self.conn.send(("join", None))
        join_pair(address, LEADER, self.device, store)
        self._backend = address.backend
        self._state = "ok"
        self._watchdog.start()

    # ------------------------------------------------------------------ calls

    def send_call(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], selection: Any = None
    ) -> None:
        """Describe one DiT call on the pipe, then broadcast its tensors (contiguous)."""
        tensors: list[Tensor] = []

        def spec(value: Any) -> Any:
            if isinstance(value, Tensor):
                tensors.append(value)
                return _TensorSpec(tuple(value.shape), value.dtype)
            return value

        call = _Call(
            tuple(spec(a) for a in args),
            {k: spec(v) for k, v in kwargs.items()},
            selection,
            _autocast_state(self.device.type),
        )
        with self._lock:
            self._call_started = time.monotonic()
        self.conn.send(("call", call))
        for tensor in tensors:
            dist.broadcast(tensor, src=LEADER)

    def confirm(self) -> None:
        """The call's collectives are done (on CUDA: really, not just queued); raises
        FollowerLost when the follower went away meanwhile (the result may be partial)."""
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()
        with self._lock:
            self._call_started = None
        if not self.is_up:
            raise FollowerLost(self._state)

    def lose(self, why: str) -> None:
        """Take the follower out of service (from the leader's thread, after a failed call):
        stop its process and release the process group."""
        self._go_down(why)
        self._stop_process(0.0)
        with contextlib.suppress(Exception):  # NCCL: already aborted by the watchdog
            if dist.is_initialized():
                dist.destroy_process_group()

    # ------------------------------------------------------------------ stop

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop the follower (it leaves its loop and exits) and the process group. Idempotent."""
        if self._closing.is_set():
            return
        self._closing.set()
        if self.process.is_alive():
            with contextlib.suppress(OSError):
                self.conn.send(("stop", None))
        self._stop_process(timeout_s)
        if self._state in ("ok", "starting"):
            self._state = "stopped"
        if self._backend is not None:
            with contextlib.suppress(Exception):
                if dist.is_initialized():
                    dist.destroy_process_group()
        self.conn.close()

    def _stop_process(self, timeout_s: float) -> None:
        self.process.join(timeout_s)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(10.0)

    # ------------------------------------------------------------------ watchdog

    def _watch(self) -> None:
        while not self._closing.is_set():
            if wait([self.process.sentinel], timeout=self.poll_s):
                if not self._closing.is_set():
                    self._go_down(f"the follower exited with code {self.process.exitcode}")
                return
            with self._lock:
                started = self._call_started
            if started is not None and time.monotonic() - started > self.call_timeout_s:
                logger.error(
                    "CFG-parallel: the follower left a call unanswered for %.0f s; stopping it",
                    self.call_timeout_s,
                )
                self.process.kill()  # its sentinel fires next round

    def _go_down(self, why: str) -> None:
        with self._lock:
            if self._state != "ok":
                return
            self._state = f"lost: {why}"
        logger.error(
            "CFG-parallel: %s; the leader runs both halves of every edit from now on (restart "
            "the server to use both GPUs again)",
            why,
        )
        if self._backend == "nccl":
            try:  # ends a collective waiting for the dead peer (gloo's fail by themselves)
                dist.distributed_c10d._abort_process_group()
            except Exception:
                logger.exception("CFG-parallel: aborting the NCCL process group failed")


def _autocast_state(device_type: str) -> tuple[str, torch.dtype] | None:
    if not torch.is_autocast_enabled(device_type):
        return None
    return device_type, torch.get_autocast_dtype(device_type)


class CFGLeaderDiT(nn.Module):
    """The leader's DiT: called exactly like the DiT; each call with an even batch computes the
    first half here and the second on the follower. An odd batch (no guidance; v1.2 prompts of
    different lengths, which the sampler runs as two forwards of batch 1) runs here alone, as
    does every call once the follower is lost. `split_calls` / `leader_calls` count both."""

    def __init__(self, parallel: CFGParallelDiT, link: FollowerLink) -> None:
        super().__init__()
        self.parallel = parallel
        self.link = link
        self.selection: Any = None  # the LoRA choices of the running edit (None: defaults)
        self.split_calls = 0
        self.leader_calls = 0

    @property
    def config(self) -> Any:
        return self.parallel.config

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        batch = batch_of(args, kwargs)
        if batch % WORLD_SIZE or not self.link.is_up:
            return self._alone(args, kwargs, None)
        args = tuple(_contiguous(a) for a in args)
        kwargs = {k: _contiguous(v) for k, v in kwargs.items()}
        try:
            self.link.send_call(args, kwargs, self.selection)
        except _LINK_ERRORS as exc:  # a closed pipe, a refused broadcast: the follower is gone
            self.link.lose(f"a DiT call could not be sent ({_describe(exc)})")
            return self._alone(args, kwargs, None)
        except BaseException as exc:
            self.link.lose(f"the leader left a DiT call ({_describe(exc)})")
            raise
        try:
            mine = self.parallel.compute_half(args, kwargs, LEADER)
        except BaseException as exc:
            # The leader's own half failed (out of memory, a time limit's signal) while the
            # follower waits in this call's all-gather: the pair is out of step.
            self.link.lose(f"the leader left a DiT call ({_describe(exc)})")
            raise
        try:
            out = self.parallel.gather(mine, batch)
            self.link.confirm()
        except _LINK_ERRORS as exc:
            self.link.lose(f"the follower's half did not arrive ({_describe(exc)})")
            return self._alone(args, kwargs, mine)
        except BaseException as exc:
            self.link.lose(f"the leader left a DiT call ({_describe(exc)})")
            raise
        self.split_calls += 1
        return out

    def _alone(self, args: tuple[Any, ...], kwargs: dict[str, Any], mine: Tensor | None) -> Tensor:
        """The whole call on the leader (reusing its own half when already computed)."""
        self.leader_calls += 1
        if mine is None:
            out: Tensor = self.parallel.dit(*args, **kwargs)
            return out
        return torch.cat([mine, self.parallel.compute_half(args, kwargs, FOLLOWER)])


# What a failed collective or a closed pipe raises (torch's DistError and FollowerLost are
# RuntimeErrors); anything else leaving a call is the leader's own.
_LINK_ERRORS = (RuntimeError, OSError)


def _contiguous(value: Any) -> Any:
    return value.contiguous() if isinstance(value, Tensor) else value


def _describe(exc: BaseException) -> str:
    """The exception's type and first sentence (gloo's messages run on with advice)."""
    text = str(exc).strip().splitlines()[0].split(". ")[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__


# --------------------------------------------------------------------------- the follower

Select = Callable[[Any], AbstractContextManager[Any]]


def run_follower(
    conn: Connection,
    address: PairAddress,
    device: torch.device,
    load: Callable[[], tuple[nn.Module, Select]],
) -> int:
    """The follower process's life: load (`load` returns the DiT and the LoRA selector), say
    so, join the pair when the leader says, serve calls until told to stop or until the leader
    is gone. Returns the exit status."""
    try:
        dit, select = load()
    except BaseException as exc:
        logger.exception("CFG follower: the model could not be loaded")
        with contextlib.suppress(OSError):
            conn.send(("failed", f"the follower could not load the model ({_describe(exc)})"))
        return 1
    conn.send(("ready", {"pid": os.getpid(), "device": str(device)}))
    try:
        kind, _ = conn.recv()
    except (EOFError, OSError):
        return 0
    if kind != "join":
        return 0
    join_pair(address, FOLLOWER, device)
    try:
        serve_follower(conn, CFGParallelDiT(dit), select, device)
    finally:
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
    return 0


def serve_follower(
    conn: Connection, parallel: CFGParallelDiT, select: Select, device: torch.device
) -> None:
    """Run the second half of every call the leader sends, until "stop" or the leader is gone.

    Inputs are received into buffers kept from call to call, so the step cache (keyed by the
    conditioning tensors' storage) sees one tensor per branch through an edit, as on the leader.
    """
    buffers: dict[str, Tensor] = {}
    while True:
        try:
            kind, call = conn.recv()
        except (EOFError, OSError):
            logger.info("CFG follower: the leader is gone; exiting")
            return
        if kind != "call":
            return
        with torch.inference_mode(), _autocast(call.autocast), select(call.selection):
            args = tuple(
                _receive(f"arg{i}", spec, device, buffers) for i, spec in enumerate(call.args)
            )
            kwargs = {k: _receive(k, spec, device, buffers) for k, spec in call.kwargs.items()}
            parallel(*args, **kwargs)


def _receive(name: str, spec: Any, device: torch.device, buffers: dict[str, Tensor]) -> Any:
    if not isinstance(spec, _TensorSpec):
        return spec
    buffer = buffers.get(name)
    if buffer is None or tuple(buffer.shape) != spec.shape or buffer.dtype != spec.dtype:
        with torch.inference_mode(False):  # kept across calls: a normal tensor
            buffer = torch.empty(spec.shape, dtype=spec.dtype, device=device)
        buffers[name] = buffer
    dist.broadcast(buffer, src=LEADER)
    return buffer


@contextlib.contextmanager
def _autocast(state: tuple[str, torch.dtype] | None) -> Iterator[None]:
    if state is None:
        yield
        return
    with torch.autocast(device_type=state[0], dtype=state[1]):
        yield
