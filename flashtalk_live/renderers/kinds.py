"""The renderer kinds `renderer.kind` can name: one entry each (adding a renderer is one entry here).

Each kind says how to start what it needs before the daemon is built (GPU ranks) and how to build its renderer
factory; the still renderer is always there as the fallback, so the "still" kind builds nothing. No heavy import at
module level: `config.load_settings` asks this table whether `renderer.kind` names a kind and lets the kind check
what only it knows (a flashtalk room's model profiles against its chunking).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

from flashtalk_live.engine.profile import room_profiles  # torch-free: the profiles, read at config load
from flashtalk_live.events import EventBus
from flashtalk_live.log import get_logger
from flashtalk_live.native_preload import preload_torch, set_allocator_conf
from flashtalk_live.renderers.base import Renderer

from flashtalk_live.settings import Settings

if TYPE_CHECKING:  # parallel/ imports torch: the type only, loaded when a flashtalk room starts its ranks
    from flashtalk_live.parallel.launch import ParallelHandle

# Builds the preferred renderer; the daemon binds it to the settings for the renderer supervisor (renderers/
# supervisor.py), which calls it in the background, again after a failure.
RendererFactory = Callable[["Settings"], Renderer]
# (setting, path, "dir", "file" or "any"): what a renderer reads from disk, checked by `config show` and `run` (preflight.py)
NeededPath = tuple[str, str, str]


@dataclass(frozen=True)
class RendererKind:
    name: str
    description: str
    # (settings, events, parallel handle) -> a factory the renderer supervisor loads in the background, or None
    factory: Callable[[Settings, EventBus, Optional[ParallelHandle]], Optional[RendererFactory]]
    # settings -> a handle on worker processes started before the daemon (several GPUs), or None
    launch: Callable[[Settings], Optional[ParallelHandle]] = lambda settings: None
    # settings -> None, or ValueError naming the setting: what only this kind knows, checked at config load
    check: Callable[[Settings], None] = lambda settings: None
    # settings -> the folders and files it loads (a missing one fails the start with exit 2, not a fallback room)
    needs: Callable[[Settings], list[NeededPath]] = lambda settings: []


def flashtalk_factory(settings: Settings, events: EventBus, parallel: ParallelHandle | None = None) -> RendererFactory:
    """The FlashTalk renderer, over the job's ranks when `parallel` (a ParallelHandle) is given."""

    def build(s: Settings) -> Renderer:
        if "torch" not in sys.modules:  # a one-GPU room's first build (a several-GPU one imported torch to launch)
            alloc = set_allocator_conf(s.model.cuda_alloc_conf)
            done = preload_torch(s.model.device)  # else torch's import holds the interpreter: a freeze on air
            get_logger("renderer").info("torch_preloaded", cuda_alloc_conf=alloc, **done)
        # engine/ and parallel/ import torch: loaded only when a flashtalk renderer is built, never for `still`.
        from flashtalk_live.engine.renderer import FlashTalkConfig, build_flashtalk_renderer
        from flashtalk_live.parallel.launch import parallel_flashtalk_renderer

        config = FlashTalkConfig.from_settings(s)
        if parallel is not None:
            return parallel_flashtalk_renderer(config, events, parallel)
        return build_flashtalk_renderer(config, events)

    return build


def _single_gpu_room(settings: Settings) -> bool:
    """One device and no torchrun job: no ranks to start. Read without torch, so that a one-GPU room's first
    import of torch is the render thread's build, after the still renderer is on air."""
    g = settings.model.gpus
    one = g == 1 if isinstance(g, int) and not isinstance(g, bool) else isinstance(g, (list, tuple)) and len(g) == 1
    return one and os.environ.get("WORLD_SIZE", "1") in ("", "1")


def _flashtalk_launch(settings: Settings) -> ParallelHandle | None:
    if _single_gpu_room(settings):
        return None
    from flashtalk_live.parallel.launch import maybe_launch_workers  # torch: only for a several-GPU room

    return maybe_launch_workers(settings.model, room_profiles(settings))


def _flashtalk_check(settings: Settings) -> None:
    """video.chunk_frames must be the profile's new frames: the profile (and every "auto" candidate, names and
    .toml files alike) is resolved here, once (`room_profiles` keeps it); a bad one raises a ProfileError."""
    profiles = room_profiles(settings)
    if profiles[0].new_frames != settings.video.chunk_frames:
        raise ValueError(f"video.chunk_frames = {settings.video.chunk_frames}, but model.profile = "
                         f"{settings.model.profile!r} makes {profiles[0].new_frames} new frames per chunk "
                         "(frame_num - motion_frames)")
    m = settings.model
    if m.abandon_run_ahead_blocks and not _single_gpu_room(settings):
        raise ValueError("model.abandon_run_ahead_blocks works on one GPU only (the ranks of a several-GPU room "
                         "run every block together); set it to 0")
    if m.abandon_run_ahead_blocks and m.cuda_graphs:
        raise ValueError("model.abandon_run_ahead_blocks needs model.cuda_graphs = false (a step's graphs replay "
                         "as one tree); set one of them off")


def _flashtalk_needs(settings: Settings) -> list[NeededPath]:
    m = settings.model
    if m.random_weights != "off":  # benchmarks: no release on disk
        return []
    needs = [("model.weights_dir", m.weights_dir or "", "dir")]
    if m.wav2vec_dir:  # unset: found beside weights_dir (checkpoints/release.py)
        needs.append(("model.wav2vec_dir", m.wav2vec_dir, "dir"))
    if m.decoder == "taehv" and m.taehv_path:  # unset: found beside weights_dir when the engine loads
        needs.append(("model.taehv_path", m.taehv_path, "any"))
    return needs


KINDS: dict[str, RendererKind] = {k.name: k for k in (
    RendererKind("still", "the reference portrait speaking (renderers/face.py), no model (also every kind's fallback)",
                 lambda s, e, p: None),
    RendererKind("flashtalk", "SoulX-FlashTalk-14B (engine/), on one GPU or over model.gpus ranks",
                 flashtalk_factory, _flashtalk_launch, _flashtalk_check, _flashtalk_needs),
)}
NAMES = tuple(KINDS)


def renderer_kind(name: str) -> RendererKind:
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"renderer.kind {name!r} is not a renderer; expected one of {list(KINDS)}") from None
