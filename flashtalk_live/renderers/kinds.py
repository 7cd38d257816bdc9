"""The renderer kinds `renderer.kind` can name: one entry each (adding a renderer is one entry here).

Each kind says how to start what it needs before the daemon is built (GPU ranks) and how to build its renderer
factory; the still renderer is always there as the fallback, so the "still" kind builds nothing. No heavy import at
module level: settings.py reads the names from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class RendererKind:
    name: str
    description: str
    # (settings, events, parallel handle) -> a factory the renderer supervisor loads in the background, or None
    factory: Callable[[Any, Any, Any], Any]
    # settings -> a handle on worker processes started before the daemon (several GPUs), or None
    launch: Callable[[Any], Any] = lambda settings: None


def _flashtalk_factory(settings: Any, events: Any, parallel: Any) -> Any:
    from flashtalk_live.daemon import flashtalk_factory

    return flashtalk_factory(settings, events, parallel)


def _flashtalk_launch(settings: Any) -> Any:
    from flashtalk_live.parallel.launch import maybe_launch_workers

    return maybe_launch_workers(settings)


KINDS: dict[str, RendererKind] = {k.name: k for k in (
    RendererKind("still", "the reference portrait, no model (also every kind's fallback)", lambda s, e, p: None),
    RendererKind("flashtalk", "SoulX-FlashTalk-14B (engine/), on one GPU or over model.gpus ranks",
                 _flashtalk_factory, _flashtalk_launch),
)}
NAMES = tuple(KINDS)


def renderer_kind(name: str) -> RendererKind:
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"renderer.kind {name!r} is not a renderer; expected one of {list(KINDS)}") from None
