"""Rank 0 drives, the other ranks compute: the DiT command protocol, the worker loop and the heartbeat.

Rank 0 runs the whole engine (timeline, audio features, sampler, VAE, colour, encoder, outputs). Its DiT is a
`DiTClient`: each call broadcasts a small pickled command on the gloo control group, then the tensors that
changed since the last call on the data group (the latent every step; the audio features once per chunk;
context, CLIP features and y once per session), then runs the DiT's own forward with its `UlyssesSplit`, as
the workers do with theirs.
Workers sit in `worker_loop`, blocked on the control group (long timeout: idle is normal) until the next
command, and answer nothing: every rank gets the full output from the final all-gather. Other ops (the
split VAE decode, `parallel/vae_split.py`) go to the loop's `handlers`.

Inputs the DiT rejects fail on every rank before any collective (`DiTInputError`): rank 0's engine gets the
error, workers log it and wait for the next command. A worker that fails inside a forward cannot rejoin
(the collective sequence is broken), so it exits non-zero; the heartbeat then takes every other rank down,
and systemd restarts the job.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.distributed as dist

from flashtalk_live.log import get_logger
from flashtalk_live.model.dit import DiTInputError, FlashTalkDiT, tensor_identity

from .group import ParallelGroup
from .ulysses import UlyssesSplit

log = get_logger("parallel")

EXIT_PEER_LOST = 75  # EX_TEMPFAIL: another rank died or hung; restart the whole job
EXIT_WORKER_ERROR = 70  # EX_SOFTWARE: this worker failed inside a forward

_ARGS = ("x", "context", "clip_fea", "y", "audio")
_DTYPES = {str(d): d for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64)}


class Heartbeat:
    """A side thread on every rank: an all-reduce on the heartbeat group every `interval_s`.

    A dead peer makes gloo raise at once (its sockets close); a hung one makes the all-reduce time out
    (the group's timeout). Then `on_failure(reason)` runs once. `stop()` ends every rank's loop in the
    same round (the all-reduce carries the stop flag), so a clean shutdown raises nothing.
    """

    def __init__(self, pg: ParallelGroup, interval_s: float, on_failure: Callable[[str], None]):
        self.pg = pg
        self.interval_s = float(interval_s)
        self.on_failure = on_failure
        self._stop = threading.Event()
        self.done = threading.Event()
        self.rounds = 0
        self.failed: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{pg.rank}", daemon=True)

    def start(self) -> "Heartbeat":
        if self.pg.world_size > 1:
            self._thread.start()
        else:
            self.done.set()
        return self

    def _run(self) -> None:
        try:
            while True:
                flag = torch.tensor([1 if self._stop.is_set() else 0], dtype=torch.int32)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.pg.heartbeat)
                self.rounds += 1
                if int(flag.item()):
                    return
                self._stop.wait(self.interval_s)
        except Exception as e:  # noqa: BLE001 - any failure of the heartbeat is a lost peer
            self.failed = f"heartbeat failed on rank {self.pg.rank}: {type(e).__name__}: {str(e)[:300]}"
            self.on_failure(self.failed)
        finally:
            self.done.set()

    def stop(self, timeout_s: float | None = None) -> bool:
        """Ask every rank to stop at the next round; True when this rank's loop has ended."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.interval_s * 2 + 5 if timeout_s is None else timeout_s)
        return self.done.is_set()


class DiTClient:
    """Rank 0's DiT for the engine: same call as FlashTalkDiT, runs the forward on all ranks."""

    def __init__(self, dit: FlashTalkDiT, split: UlyssesSplit):
        if not split.pg.is_root:
            raise ValueError("DiTClient runs on rank 0; other ranks run worker_loop")
        self.dit = dit
        self.split = split
        self.pg = split.pg
        self.cfg = dit.cfg
        self._keys: dict[str, tuple | None] = {}
        self._held: dict[str, Any] = {}  # the caller's objects behind _keys, kept alive (see tensor_identity)
        self._sent: dict[str, torch.Tensor] = {}
        self.calls = 0
        self.bytes_sent = 0
        self.closed = False

    @property
    def dtype(self) -> torch.dtype:
        return self.dit.dtype

    def parameters(self):  # the engine and loaders may ask for a parameter's dtype/device
        return self.dit.parameters()

    def set_input_cache(self, enabled: bool) -> None:
        """Rank 0's DiT only; the workers' models keep their default (on) and follow the inputs' identity."""
        self.dit.set_input_cache(enabled)

    def clear_input_cache(self) -> None:
        self.dit.clear_input_cache()

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, clip_fea: torch.Tensor,
                 y: torch.Tensor, audio: torch.Tensor, *, seq_len: int | None = None) -> torch.Tensor:
        """FlashTalkDiT.forward's inputs: sent to the workers (what changed), then the forward on this rank."""
        if self.closed:
            raise RuntimeError("this parallel DiT was shut down or replaced")
        args = {"x": x, "context": context, "clip_fea": clip_fea, "y": y, "audio": audio}
        send: list[tuple[str, torch.Tensor]] = []
        for name in _ARGS:
            key = tensor_identity(args[name])
            # x changes every step: never cached. The rest: once per chunk (audio) or session.
            if name == "x" or key is None or self._keys.get(name) != key:
                if not isinstance(args[name], torch.Tensor):  # before anything is sent: the job stays in step
                    raise DiTInputError(f"{name}: expected a tensor, got {type(args[name]).__name__}")
                tensor = args[name].to(self.pg.device).contiguous()
                send.append((name, tensor))
                self._keys[name] = key
                self._held[name] = args[name]
                self._sent[name] = tensor
        # t goes as a tensor with x, not as numbers in the command: reading a device tensor would stall the queue.
        tt = torch.as_tensor(t).to(device=self.pg.device, dtype=torch.float32).reshape(-1)
        send.append(("t", tt))
        cmd = {"op": "forward", "seq_len": seq_len, "send": [(n, tuple(v.shape), str(v.dtype)) for n, v in send]}
        if self.pg.world_size > 1:
            dist.broadcast_object_list([cmd], src=0, group=self.pg.control)
            for _, v in send:
                dist.broadcast(v, src=0, group=self.pg.data)
                self.bytes_sent += v.numel() * v.element_size()
        self.calls += 1
        a = self._sent
        return self.dit(a["x"], tt, a["context"], a["clip_fea"], a["y"], a["audio"], seq_len=seq_len, split=self.split)


def send_shutdown(pg: ParallelGroup) -> None:
    """Rank 0: tell the workers to leave their loop (they exit 0)."""
    if pg.world_size > 1:
        dist.broadcast_object_list([{"op": "shutdown"}], src=0, group=pg.control)


def worker_loop(dit: FlashTalkDiT, split: UlyssesSplit, *, on_command: Callable[[dict[str, Any]], None] | None = None,
                handlers: Mapping[str, Callable[[dict[str, Any]], None]] | None = None) -> int:
    """Serve rank 0's commands until 'shutdown'; returns the number of forwards run. Exceptions propagate.

    `handlers` answer other ops (e.g. the split VAE decode), consulted before 'forward'; a handler gets the
    command and must join the same collectives as rank 0. Its failure propagates like a failed forward.
    """
    pg = split.pg
    handlers = dict(handlers or {})
    for reserved in ("shutdown", "forward"):
        if reserved in handlers:
            raise ValueError(f"op {reserved!r} is the worker loop's own; it cannot have a handler")
    cache: dict[str, torch.Tensor] = {}
    n = 0
    while True:
        box: list[Any] = [None]
        dist.broadcast_object_list(box, src=0, group=pg.control)
        cmd = box[0]
        if on_command is not None:
            on_command(cmd)
        op = cmd.get("op") if isinstance(cmd, dict) else None
        if op == "shutdown":
            return n
        if op in handlers:
            handlers[op](cmd)
            continue
        if op != "forward":
            raise RuntimeError(f"unknown command from rank 0: {cmd!r}")
        for name, shape, dtype in cmd["send"]:
            buf = torch.empty(shape, dtype=_DTYPES[dtype], device=pg.device)
            dist.broadcast(buf, src=0, group=pg.data)
            cache[name] = buf
        try:
            with torch.no_grad():
                dit(cache["x"], cache["t"], cache["context"], cache["clip_fea"], cache["y"], cache["audio"],
                    seq_len=cmd["seq_len"], split=split)
        except DiTInputError as e:  # rank 0 got the same error from the same check, before any collective
            log.warning("parallel_bad_input", rank=pg.rank, error=str(e)[:300])
            continue
        n += 1


def hard_exit(code: int, reason: str, cleanup: Callable[[], None] | None = None) -> None:
    """Log, run cleanup (best effort), and leave now: no atexit, no joining of threads stuck in collectives."""
    try:
        log.critical("parallel_job_down", reason=reason, exit_code=code, pid=os.getpid())
        if cleanup is not None:
            cleanup()
    finally:
        time.sleep(0.05)
        os._exit(code)
