"""torch.compile's on-disk caches kept under the room's state dir, so a restart does not compile from scratch.

Inductor keeps its FX-graph cache, autotuning results and (in its `triton/` subfolder) the built Triton kernels
under TORCHINDUCTOR_CACHE_DIR, /tmp/torchinductor_<user> by default: a reboot or a fresh container empties that,
and every start of a room pays the whole compile of the DiT blocks again. `use_compile_cache(path)` points it at
`model.compile_cache_dir` ("{state_dir}/compile-cache") before the first compile; inductor reads the variable
at each use, so setting it in the daemon's own process is enough. An empty setting leaves torch's default.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

INDUCTOR_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


def use_compile_cache(path: str | Path | None, environ: MutableMapping[str, str] | None = None) -> Path | None:
    """Create `path` (mode 0700: compiled code is executed) and make it torch.compile's cache; None/"" is a no-op.
    Returns the folder in use, or None when torch's default stays."""
    if not path:
        return None
    env = os.environ if environ is None else environ
    folder = Path(path).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    env[INDUCTOR_CACHE_ENV] = str(folder)
    return folder
