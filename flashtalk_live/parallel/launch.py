"""Start the ranks of a multi-GPU job: from settings.model.gpus (rank 0 = the calling process) or under torchrun.

    handle = maybe_launch_workers(settings.model, room_profiles(settings))   # in the daemon, before loading models
    # None: one GPU, nothing to do. On a torchrun worker rank the call never returns (worker loop, then exit).
    models.dit = handle.wrap_dit(models.dit)   # rank 0's engine now runs the DiT on every rank
    models.vae = handle.wrap_vae(models.vae, enabled=profile.split_vae_decode)  # decode split by height
    ...
    handle.close()                             # workers leave their loop and exit 0

Workers are `python -m flashtalk_live.parallel.launch` children with RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR / MASTER_PORT set and a JSON `WorkerSpec` in FLASHTALK_PARALLEL_SPEC. They load the DiT, and
the VAE only when the profile splits the decode (`WorkerSpec.vae_factory`).
They die with the daemon (PR_SET_PDEATHSIG), and the daemon goes down non-zero when one of them dies
(child monitor + heartbeat), so systemd restarts the whole job. The unit needs no change.
"""

from __future__ import annotations

import ctypes
import dataclasses
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from safetensors.torch import load_file

from flashtalk_live.checkpoints.release import load_dit, load_vae, read_dit_config
from flashtalk_live.engine.profile import Profile, splits_vae_decode
from flashtalk_live.engine.renderer import FlashTalkConfig, FlashTalkRenderer, build_flashtalk_renderer
from flashtalk_live.events import EventBus
from flashtalk_live.log import configure, get_logger
from flashtalk_live.model.attention import set_default_backend
from flashtalk_live.model.dit import DiTConfig, FlashTalkDiT
from flashtalk_live.model.vae import VAEConfig, WanVAE
from flashtalk_live.quant.fp8 import Fp8Plan, quantize_dit_, resolve_plan
from flashtalk_live.settings import ModelSettings

from .group import ParallelConfigError, ParallelGroup, env_rank_info, init_parallel, resolve_gpus
from .runtime import EXIT_PEER_LOST, EXIT_WORKER_ERROR, DiTClient, Heartbeat, hard_exit, send_shutdown, worker_loop
from .ulysses import UlyssesSplit
from .vae_split import VAE_DECODE_OP, SplitDecodeVAE, serve_vae_decode

log = get_logger("parallel")
SPEC_ENV = "FLASHTALK_PARALLEL_SPEC"
_PR_SET_PDEATHSIG = 1


@dataclass
class WorkerSpec:
    """What every rank needs to join and build its DiT (and VAE, for a split decode); JSON-serialisable (it
    travels in the environment)."""

    num_heads: int
    devices: list[int]  # device id of rank i (CUDA); ignored on the CPU
    device_type: str = "cuda"  # "cuda" or "cpu"
    dtype: str = "bfloat16"
    attention: str = "sdpa"
    factory: str = "flashtalk_live.parallel.launch:release_dit"  # "module:function"(device, dtype, **factory_args)
    factory_args: dict[str, Any] = field(default_factory=dict)
    # Set when the profile splits the VAE decode: workers build this VAE (same weights as rank 0's!) and answer
    # "vae_decode" commands. "module:function"(device, dtype, **vae_factory_args); None: workers hold no VAE.
    vae_factory: str | None = None
    vae_factory_args: dict[str, Any] = field(default_factory=dict)
    backend: str | None = None  # None: nccl on cuda, gloo on cpu
    heartbeat_interval_s: float = 5.0
    heartbeat_timeout_s: float = 30.0
    threads: int | None = None  # torch.set_num_threads in workers (CPU tests: 1)
    extra_sys_path: list[str] = field(default_factory=list)  # for factories outside the package (tests)

    @property
    def world_size(self) -> int:
        return len(self.devices)

    def device_for(self, rank: int, local_rank: int | None = None) -> torch.device:
        if self.device_type == "cpu":
            return torch.device("cpu")
        idx = self.devices[rank] if rank < len(self.devices) else (local_rank if local_rank is not None else rank)
        return torch.device(f"cuda:{idx}")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "WorkerSpec":
        return cls(**json.loads(text))


# ------------------------------------------------------------------------------------------ DiT factories


def _dtype(name: str) -> torch.dtype:
    d = getattr(torch, name, None)
    if not isinstance(d, torch.dtype):
        raise ParallelConfigError(f"unknown dtype {name!r}")
    return d


def _call_factory(spec: WorkerSpec, path: str, args: dict[str, Any], device: torch.device) -> torch.nn.Module:
    module_name, _, fn_name = path.partition(":")
    if not module_name or not fn_name:
        raise ParallelConfigError(f"factory {path!r} is not 'module:function'")
    for p in spec.extra_sys_path:
        if p not in sys.path:
            sys.path.insert(0, p)
    fn = getattr(importlib.import_module(module_name), fn_name)
    return fn(device=device, dtype=_dtype(spec.dtype), **args)


def build_dit(spec: WorkerSpec, device: torch.device) -> FlashTalkDiT:
    dit = _call_factory(spec, spec.factory, spec.factory_args, device)
    if not isinstance(dit, FlashTalkDiT):  # the workers run FlashTalkDiT.forward with their UlyssesSplit
        raise ParallelConfigError(f"factory {spec.factory!r} returned a {type(dit).__name__}, not a FlashTalkDiT")
    return dit


def build_vae(spec: WorkerSpec, device: torch.device) -> WanVAE | None:
    """The worker's VAE for the split decode; None when the spec has no vae_factory."""
    if spec.vae_factory is None:
        return None
    vae = _call_factory(spec, spec.vae_factory, spec.vae_factory_args, device)
    if not isinstance(vae, WanVAE):
        raise ParallelConfigError(f"vae_factory {spec.vae_factory!r} built a {type(vae).__name__}, not a WanVAE")
    return vae


def release_dit(*, device: torch.device, dtype: torch.dtype, weights_dir: str, quantize: str = "none",
                fp8_keep_bf16_blocks: Sequence[int] = (2, 3), fp8_backend: str = "scaled_mm",
                fp8_fast_accum: bool = False) -> FlashTalkDiT:
    """The released DiT (strict, header-checked), as rank 0 loads it (fp8 as settings.model says, where it runs)."""
    fp8 = resolve_plan(quantize, fp8_keep_bf16_blocks, fp8_backend, device, fp8_fast_accum)
    return load_dit(weights_dir, device, dtype, fp8=fp8).eval().requires_grad_(False)


def files_dit(*, device: torch.device, dtype: torch.dtype, config_json: str, weights: str,
              overrides: dict[str, Any] | None = None, fp8: dict[str, Any] | None = None) -> FlashTalkDiT:
    """A DiT from a config.json (released or fixture style) and one safetensors file (tests, tiny releases).

    overrides change config fields whose weights keep their shapes (e.g. num_heads: tests of head splits).
    fp8: Fp8Plan fields to quantise the blocks after loading (on any device: the CPU runs fp8 emulated).
    """
    cfg = DiTConfig.from_dict(json.loads(Path(config_json).read_text()))
    if overrides:
        cfg = dataclasses.replace(cfg, **overrides)
    model = FlashTalkDiT(cfg)
    model.load_state_dict(load_file(weights), strict=True)
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    if fp8:
        quantize_dit_(model, Fp8Plan(**fp8))
    return model


# ------------------------------------------------------------------------------------------ VAE factories


def release_vae(*, device: torch.device, dtype: torch.dtype, weights_dir: str) -> torch.nn.Module:
    """The released VAE (strict), as rank 0 loads it."""
    return load_vae(weights_dir, device, dtype).eval().requires_grad_(False)


def files_vae(*, device: torch.device, dtype: torch.dtype, config_json: str, weights: str) -> torch.nn.Module:
    """A VAE from a config.json (VAEConfig fields, or the fixture's {"constructor_kwargs": ...}) and one
    safetensors file (tests, tiny releases)."""
    data = json.loads(Path(config_json).read_text())
    if "constructor_kwargs" in data:
        cfg = VAEConfig.from_reference_kwargs(data["constructor_kwargs"])
    else:
        cfg = VAEConfig(**data)  # VAEConfig's own fields; its __post_init__ turns JSON lists into tuples
    model = WanVAE(cfg)
    model.load_state_dict(load_file(weights), strict=True)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


# ------------------------------------------------------------------------------------------ rank 0


class ParallelHandle:
    """Rank 0's view of the job: the process group, the spawned workers, the heartbeat, failure handling."""

    def __init__(self, pg: ParallelGroup, spec: WorkerSpec, processes: list[subprocess.Popen]):
        self.pg = pg
        self.spec = spec
        self.processes = processes
        self.client: DiTClient | None = None
        self.vae_client: SplitDecodeVAE | None = None
        self.failure: str | None = None
        self.grace_s = 10.0
        # Called once with the reason when a rank is lost; must make the process exit (non-zero). The
        # default leaves at once; a daemon may plug in its own orderly stop (a hard exit follows grace_s).
        self.on_failure: Callable[[str], None] | None = None
        self._closing = False
        self._lock = threading.Lock()
        self.heartbeat = Heartbeat(pg, spec.heartbeat_interval_s, self._failed)
        self._monitors = [threading.Thread(target=self._watch, args=(p,), daemon=True, name=f"rank-watch-{i + 1}")
                          for i, p in enumerate(processes)]

    def start(self) -> "ParallelHandle":
        self.heartbeat.start()
        for t in self._monitors:
            t.start()
        return self

    @property
    def device(self) -> torch.device:
        return self.pg.device

    @property
    def world_size(self) -> int:
        return self.pg.world_size

    def wrap_dit(self, dit: FlashTalkDiT) -> DiTClient:
        """Rank 0's loaded DiT -> the engine's DiT (same call), run over all ranks.

        Called again (the renderer reloaded), the new client replaces the old one; its first call sends
        every input afresh, so the workers' caches cannot go stale.
        """
        if self.failure is not None or self._closing:
            raise RuntimeError(f"the parallel job is down: {self.failure or 'closed'}")
        if self.client is not None:
            self.client.closed = True  # the old one must not be used any more
        self.client = DiTClient(dit, UlyssesSplit(self.pg, dit.cfg.num_heads))
        return self.client

    def wrap_vae(self, vae: WanVAE, enabled: bool = True) -> SplitDecodeVAE:
        """Rank 0's loaded VAE -> the engine's VAE: `decode` split by height over all ranks when `enabled`
        (encode stays on rank 0); `enabled=False` decodes on rank 0 alone. Replaces (closes) a previous one.

        The workers must hold the same VAE (spec.vae_factory); without it an enabled split is refused here,
        since a worker would otherwise meet a command it cannot answer and take the job down.
        """
        if self.failure is not None or self._closing:
            raise RuntimeError(f"the parallel job is down: {self.failure or 'closed'}")
        if enabled and self.world_size > 1 and self.spec.vae_factory is None:
            raise ParallelConfigError("split VAE decode asked for, but the workers hold no VAE "
                                      "(WorkerSpec.vae_factory is not set; spec_from_settings sets it when "
                                      "the profile has split_vae_decode = true)")
        if self.vae_client is not None:
            self.vae_client.closed = True
        self.vae_client = SplitDecodeVAE(vae, self.pg, enabled=enabled)
        return self.vae_client

    def _watch(self, proc: subprocess.Popen) -> None:
        code = proc.wait()
        if not self._closing:
            self._failed(f"worker pid {proc.pid} exited with code {code}")

    def _kill_workers(self) -> None:
        for p in self.processes:
            if p.poll() is None:
                p.kill()

    def _failed(self, reason: str) -> None:
        with self._lock:
            if self._closing or self.failure is not None:
                return
            self.failure = reason
        log.error("parallel_rank_lost", reason=reason)
        if self.on_failure is None:
            hard_exit(EXIT_PEER_LOST, reason, self._kill_workers)
            return
        threading.Timer(self.grace_s, hard_exit, args=(EXIT_PEER_LOST, reason, self._kill_workers)).start()
        try:
            self.on_failure(reason)
        except Exception as e:  # noqa: BLE001
            hard_exit(EXIT_PEER_LOST, f"{reason}; on_failure raised {e!r}", self._kill_workers)

    def close(self, timeout_s: float = 30.0) -> list[int | None]:
        """Workers leave their loop and exit 0; returns their exit codes (None: had to be killed)."""
        with self._lock:
            if self._closing:
                return [p.returncode for p in self.processes]
            self._closing = True
        if self.client is not None:
            self.client.closed = True
        if self.vae_client is not None:
            self.vae_client.closed = True
        if self.failure is None:
            try:
                send_shutdown(self.pg)
                self.heartbeat.stop()
            except Exception as e:  # noqa: BLE001 - a peer already gone; kill below
                log.warning("parallel_close_error", error=repr(e))
        codes: list[int | None] = []
        for p in self.processes:
            try:
                codes.append(p.wait(timeout_s))
            except subprocess.TimeoutExpired:
                p.kill()
                codes.append(None)
        self.pg.destroy()
        return codes


def parallel_flashtalk_renderer(config: FlashTalkConfig, events: EventBus | None,
                                handle: ParallelHandle) -> FlashTalkRenderer:
    """build_flashtalk_renderer with its DiT running over the job's ranks (warm-up included), and its VAE
    decode split over them when the configured profile has split_vae_decode."""
    split = splits_vae_decode(config.profiles)
    vae_wrapper = partial(handle.wrap_vae, enabled=True) if split else None
    return build_flashtalk_renderer(config, events, dit_wrapper=handle.wrap_dit, vae_wrapper=vae_wrapper)


def _free_port(addr: str) -> int:
    with socket.socket() as s:
        s.bind((addr, 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the parent (the daemon) dies, however it dies."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


def launch_workers(spec: WorkerSpec, *, master_addr: str = "127.0.0.1", master_port: int | None = None,
                   log_dir: str | Path | None = None) -> ParallelHandle:
    """Spawn ranks 1..N-1 as children and join as rank 0. Returns the started handle."""
    ws = spec.world_size
    if ws < 2:
        raise ParallelConfigError("launch_workers needs at least 2 devices")
    port = master_port or _free_port(master_addr)
    procs: list[subprocess.Popen] = []
    base_env = dict(os.environ)
    base_env.update({"MASTER_ADDR": master_addr, "MASTER_PORT": str(port), "WORLD_SIZE": str(ws),
                     SPEC_ENV: spec.to_json()})
    try:
        for rank in range(1, ws):
            env = dict(base_env, RANK=str(rank), LOCAL_RANK=str(rank))
            out = None
            if log_dir is not None:
                out = open(Path(log_dir) / f"rank{rank}.log", "ab")  # noqa: SIM115 - handed to the child
            procs.append(subprocess.Popen([sys.executable, "-m", "flashtalk_live.parallel.launch"], env=env,
                                          stdout=out, stderr=subprocess.STDOUT if out else None,
                                          preexec_fn=_die_with_parent))
            if out is not None:
                out.close()
        pg = _join(spec, 0, ws, 0, master_addr, port)
    except BaseException:
        for p in procs:
            p.kill()
        raise
    log.info("parallel_job_started", **pg.describe(), workers=[p.pid for p in procs])
    return ParallelHandle(pg, spec, procs).start()


def _join(spec: WorkerSpec, rank: int, ws: int, local: int, addr: str, port: int) -> ParallelGroup:
    if spec.threads:
        torch.set_num_threads(spec.threads)
    set_default_backend(spec.attention)
    return init_parallel(rank=rank, world_size=ws, num_heads=spec.num_heads, device=spec.device_for(rank, local),
                         master_addr=addr, master_port=port, local_rank=local, backend=spec.backend,
                         heartbeat_timeout_s=spec.heartbeat_timeout_s)


def spec_from_settings(model: ModelSettings, profiles: Sequence[Profile]) -> WorkerSpec:
    """The WorkerSpec of the model section: the released DiT from weights_dir on the listed GPUs, and the
    released VAE too when one of the room's profiles (engine.profile.room_profiles) has split_vae_decode."""
    m = model
    ids = resolve_gpus(m.gpus)
    if not m.weights_dir:
        raise ParallelConfigError("model.weights_dir is not set: every rank loads the DiT from it")
    cfg = read_dit_config(m.weights_dir)
    split = splits_vae_decode(profiles)
    device_type = torch.device(m.device).type
    return WorkerSpec(num_heads=cfg.num_heads, devices=ids, device_type=device_type, dtype=m.dtype,
                      attention=m.attention,
                      factory_args={"weights_dir": str(m.weights_dir), "quantize": m.quantize,
                                    "fp8_keep_bf16_blocks": list(m.fp8_keep_bf16_blocks), "fp8_backend": m.fp8_backend,
                                    "fp8_fast_accum": m.fp8_fast_accum},
                      vae_factory="flashtalk_live.parallel.launch:release_vae" if split else None,
                      vae_factory_args={"weights_dir": str(m.weights_dir)} if split else {})


def maybe_launch_workers(model: ModelSettings, profiles: Sequence[Profile],
                         spec: WorkerSpec | None = None) -> ParallelHandle | None:
    """One GPU: None. Several (model.gpus, or torchrun's WORLD_SIZE > 1): rank 0 gets the handle;
    on any other rank this runs the worker loop and exits the process (it never returns)."""
    env = env_rank_info()
    if env is not None and env[1] > 1:
        spec = spec or spec_from_settings(model, profiles)
        rank, ws, local, addr, port = env
        if len(spec.devices) != ws:  # torchrun chose the count: device = LOCAL_RANK
            spec.devices = list(range(ws))
        if rank != 0:
            sys.exit(run_worker(spec, rank, ws, local, addr, port))
        pg = _join(spec, 0, ws, local, addr, port)
        log.info("parallel_job_joined", **pg.describe(), launcher="torchrun")
        return ParallelHandle(pg, spec, []).start()
    if len(resolve_gpus(model.gpus)) < 2:
        return None
    return launch_workers(spec or spec_from_settings(model, profiles))


# ------------------------------------------------------------------------------------------ workers


def run_worker(spec: WorkerSpec, rank: int, ws: int, local: int, addr: str, port: int) -> int:
    """A worker rank's whole life: join, load the DiT (and the VAE for a split decode), serve rank 0 until
    shutdown. Returns the exit code."""
    pg = _join(spec, rank, ws, local, addr, port)
    hb = Heartbeat(pg, spec.heartbeat_interval_s, lambda reason: hard_exit(EXIT_PEER_LOST, reason)).start()
    log.info("parallel_worker_joined", **pg.describe(), pid=os.getpid())
    try:
        dit = build_dit(spec, pg.device)
        vae = build_vae(spec, pg.device)
        handlers = {} if vae is None else {VAE_DECODE_OP: partial(serve_vae_decode, vae, pg)}
        n = worker_loop(dit, UlyssesSplit(pg, dit.cfg.num_heads), handlers=handlers)
    except Exception as e:  # noqa: BLE001 - the collective sequence is broken: take the job down
        hard_exit(EXIT_WORKER_ERROR, f"worker rank {rank} failed: {type(e).__name__}: {e}")
        return EXIT_WORKER_ERROR  # not reached
    hb.stop()
    log.info("parallel_worker_done", rank=rank, forwards=n)
    pg.destroy()
    return 0


def main() -> int:
    configure("json", os.environ.get("FLASHTALK_LOG_LEVEL", "info"))
    text = os.environ.get(SPEC_ENV)
    env = env_rank_info()
    if not text or env is None:
        print(f"flashtalk_live.parallel.launch is started by the daemon (needs {SPEC_ENV}, RANK, WORLD_SIZE)",
              file=sys.stderr)
        return 2
    rank, ws, local, addr, port = env
    return run_worker(WorkerSpec.from_json(text), rank, ws, local, addr, port)


if __name__ == "__main__":
    sys.exit(main())
