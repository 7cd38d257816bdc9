"""The process groups of one sequence-parallel job: who is who, which group carries what, and the degree plan.

Three kinds of traffic, three groups:

* `data`: the DiT's all-to-alls, K/V all-gathers, input broadcasts and the output all-gather (NCCL on GPUs,
  gloo on the CPU). Only entered right after a command, so no NCCL collective ever waits through idle time.
* `control`: rank 0's small pickled commands (gloo, on the CPU). Workers block here while idle, with a long
  timeout: an idle job may sit for days.
* `heartbeat`: a gloo all-reduce every few seconds from a side thread on every rank, with a short timeout.
  A dead rank closes its sockets (gloo raises at once); a hung one misses the timeout. Either way every
  other rank learns within `heartbeat_timeout_s` and exits non-zero.

Ranks are laid out as `rank = ring_index * ulysses + ulysses_index`; see `plan_degrees`.
"""

from __future__ import annotations

import datetime
import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

IDLE_TIMEOUT_S = 7 * 24 * 3600.0  # control waits: far longer than any idle stretch between clips


class ParallelConfigError(ValueError):
    """A world size, device list or head count that cannot run; the message says which rule."""


def plan_degrees(num_heads: int, world_size: int) -> tuple[int, int]:
    """(ulysses, ring) with ulysses * ring = world_size, as the reference's USP: ulysses = gcd(heads, world).

    Ulysses ranks split the heads (an all-to-all, cheap); the rest split the keys and values (an all-gather
    of K/V, like ring attention but in one step). 40 heads: 1, 2, 4, 5, 8 (and 10, 20, 40) are pure Ulysses;
    3, 6, 7 fall back partly or wholly to the K/V all-gather, which moves world_size times more data.
    """
    if world_size < 1:
        raise ParallelConfigError(f"world size must be >= 1, got {world_size}")
    if num_heads < 1:
        raise ParallelConfigError(f"num_heads must be >= 1, got {num_heads}")
    u = math.gcd(num_heads, world_size)
    return u, world_size // u


def padded_length(n_tokens: int, world_size: int) -> int:
    """The token count rounded up to a multiple of the world size (equal slices for every rank)."""
    return -(-n_tokens // world_size) * world_size


def resolve_gpus(gpus: int | list[int] | tuple[int, ...]) -> list[int]:
    """settings.model.gpus -> the device ids of ranks 0..N-1 (an int N means 0..N-1)."""
    if isinstance(gpus, bool):
        raise ParallelConfigError("model.gpus must be a count or a list of device ids, not a boolean")
    if isinstance(gpus, int):
        if gpus < 1:
            raise ParallelConfigError(f"model.gpus must be >= 1, got {gpus}")
        return list(range(gpus))
    ids = [int(i) for i in gpus]
    if not ids:
        raise ParallelConfigError("model.gpus is an empty list")
    if any(i < 0 for i in ids) or len(set(ids)) != len(ids):
        raise ParallelConfigError(f"model.gpus must be distinct non-negative device ids, got {ids}")
    return ids


@dataclass
class ParallelGroup:
    """This process's place in the job. For world size 1 every group is None and nothing is communicated."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str  # of the data group: "nccl" or "gloo"
    ulysses: int
    ring: int
    data: Any = None
    control: Any = None
    heartbeat: Any = None
    ulysses_group: Any = None  # the ranks that share this rank's ring index (heads are split among them)
    ring_group: Any = None  # the ranks that share this rank's ulysses index (they hold the same heads)
    owns_default: bool = field(default=False, repr=False)

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    @property
    def ulysses_index(self) -> int:
        return self.rank % self.ulysses

    @property
    def ring_index(self) -> int:
        return self.rank // self.ulysses

    def describe(self) -> dict[str, Any]:
        return {"rank": self.rank, "world_size": self.world_size, "device": str(self.device), "backend": self.backend,
                "ulysses": self.ulysses, "ring": self.ring}

    def destroy(self) -> None:
        if self.owns_default and dist.is_initialized():
            dist.destroy_process_group()
        self.owns_default = False


def single(device: str | torch.device = "cpu") -> ParallelGroup:
    """The trivial group: one rank, no communication."""
    return ParallelGroup(0, 1, 0, torch.device(device), "none", 1, 1)


def init_parallel(
    *,
    rank: int,
    world_size: int,
    num_heads: int,
    device: str | torch.device,
    master_addr: str = "127.0.0.1",
    master_port: int = 29500,
    local_rank: int | None = None,
    backend: str | None = None,
    heartbeat_timeout_s: float = 30.0,
    connect_timeout_s: float = 600.0,
) -> ParallelGroup:
    """Join the job (every rank calls this with the same world_size/num_heads) and build its groups.

    backend None: NCCL for CUDA devices, gloo otherwise. The default group is gloo (control-plane
    rendezvous); the data group is a separate group of the chosen backend.
    """
    if not 0 <= rank < world_size:
        raise ParallelConfigError(f"rank {rank} outside world size {world_size}")
    device = torch.device(device)
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    if backend == "nccl" and device.type != "cuda":
        raise ParallelConfigError(f"the nccl backend needs CUDA devices, this rank has {device}")
    u, r = plan_degrees(num_heads, world_size)
    local_rank = rank if local_rank is None else local_rank
    if world_size == 1:
        return ParallelGroup(rank, 1, local_rank, device, backend, 1, 1)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    idle = datetime.timedelta(seconds=IDLE_TIMEOUT_S)
    dist.init_process_group(
        "gloo", init_method=f"tcp://{master_addr}:{master_port}", rank=rank, world_size=world_size,
        timeout=datetime.timedelta(seconds=connect_timeout_s),
    )
    ranks = list(range(world_size))
    # Every rank must create every group in the same order, even groups it is not part of.
    control = dist.new_group(ranks, backend="gloo", timeout=idle)
    heartbeat = dist.new_group(ranks, backend="gloo", timeout=datetime.timedelta(seconds=heartbeat_timeout_s))
    data = dist.new_group(ranks, backend=backend, timeout=datetime.timedelta(seconds=connect_timeout_s))
    ulysses_group = ring_group = None
    for ri in range(r):
        g = dist.new_group([ri * u + j for j in range(u)], backend=backend) if u > 1 else None
        if ri == rank // u:
            ulysses_group = g
    for ui in range(u):
        g = dist.new_group([ri * u + ui for ri in range(r)], backend=backend) if r > 1 else None
        if ui == rank % u:
            ring_group = g
    return ParallelGroup(rank, world_size, local_rank, device, backend, u, r, data=data, control=control,
                         heartbeat=heartbeat, ulysses_group=ulysses_group, ring_group=ring_group, owns_default=True)


def env_rank_info(environ: dict[str, str] | None = None) -> tuple[int, int, int, str, int] | None:
    """(rank, world_size, local_rank, master_addr, master_port) when started by torchrun or our launcher."""
    env = os.environ if environ is None else environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    try:
        rank, ws = int(env["RANK"]), int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_RANK", rank))
        port = int(env.get("MASTER_PORT", "29500"))
    except ValueError as e:
        raise ParallelConfigError(f"bad distributed environment: {e}") from None
    return rank, ws, local, env.get("MASTER_ADDR", "127.0.0.1"), port
