"""Maps torch's native libraries and opens the GPU's CUDA context before `import torch`, through foreign calls.

A one-GPU room imports torch on the renderer's load thread while the still renderer is on air. Python loads an
extension's shared libraries and torch opens the CUDA driver while holding the interpreter, so the broadcast thread
(pacer, compositor, encoder) waits the whole time: over a second on a GPU box, long enough for the pacer to fall
behind and re-anchor (a freeze on air). The same work done through ctypes foreign calls (`dlopen`, `cuInit`,
`cuDevicePrimaryCtxRetain`) leaves the interpreter free while it runs; torch's own import then finds the libraries
mapped and the device's primary context open, and takes milliseconds. Any step that fails is skipped: torch's import
does it then, as before. The CUDA allocator's settings are set here too, before torch can read them. No torch
import here.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys
import time
from pathlib import Path
from typing import MutableMapping

# torch's own order: the global dependencies first (torch maps them RTLD_GLOBAL), then the libraries its extension
# module needs (RTLD_LOCAL, as Python's extension loader does). libtorch_python is left to the import: its
# initialisers may touch the interpreter.
_TORCH_LIBRARIES = (("libtorch_global_deps.so", os.RTLD_NOW | os.RTLD_GLOBAL),
                    ("libtorch_cuda.so", os.RTLD_NOW | os.RTLD_LOCAL),
                    ("libtorch_cpu.so", os.RTLD_NOW | os.RTLD_LOCAL),
                    ("libtorch.so", os.RTLD_NOW | os.RTLD_LOCAL))


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None)
    libc.dlopen.restype = ctypes.c_void_p
    libc.dlopen.argtypes = [ctypes.c_char_p, ctypes.c_int]
    return libc


def torch_library_dir() -> Path | None:
    """Where the installed torch keeps its shared libraries (found without importing torch)."""
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return None
    lib = Path(spec.origin).parent / "lib"
    return lib if lib.is_dir() else None


def map_torch_libraries() -> list[str]:
    """dlopen torch's native libraries as a foreign call (the interpreter stays free); the names mapped."""
    lib_dir = torch_library_dir()
    if lib_dir is None or not sys.platform.startswith("linux"):
        return []
    libc = _libc()
    mapped = []
    for name, mode in _TORCH_LIBRARIES:
        path = lib_dir / name
        if path.is_file() and libc.dlopen(str(path).encode(), mode):
            mapped.append(name)
    return mapped


def cuda_ordinal(device: str) -> int | None:
    """The device index a torch device string names ("cuda" is 0); None for a device that is not CUDA (or a string
    torch itself will refuse, with its own message, at the build)."""
    kind, _, index = device.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        return None
    return int(index) if index else 0


def open_cuda_context(ordinal: int) -> bool:
    """Initialise the CUDA driver and retain the device's primary context (the one torch's runtime uses) as foreign
    calls. The context stays retained for the process's life, as torch keeps it anyway. False where no driver or
    device answers."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    device, context = ctypes.c_int(), ctypes.c_void_p()
    return (cuda.cuInit(0) == 0 and cuda.cuDeviceGet(ctypes.byref(device), ordinal) == 0
            and cuda.cuDevicePrimaryCtxRetain(ctypes.byref(context), device) == 0)


ALLOC_CONF_ENV = "PYTORCH_CUDA_ALLOC_CONF"
ALLOC_CONF_ENVS = ("PYTORCH_ALLOC_CONF", ALLOC_CONF_ENV)  # torch >= 2.9 reads the first before the second


def set_allocator_conf(conf: str, environ: MutableMapping[str, str] = os.environ) -> str | None:
    """The CUDA caching allocator's settings (model.cuda_alloc_conf) for this process, before torch reads them; the
    operator's own PYTORCH_ALLOC_CONF or PYTORCH_CUDA_ALLOC_CONF wins. Returns what the allocator will use (None:
    torch's default)."""
    if conf and not any(name in environ for name in ALLOC_CONF_ENVS):
        environ[ALLOC_CONF_ENV] = conf
    return next((environ[name] for name in ALLOC_CONF_ENVS if environ.get(name)), None)


def preload_torch(device: str) -> dict[str, object]:
    """Map torch's libraries and, for a CUDA device, open its context, before `import torch`; what was done and how
    long it took (for the load's log line)."""
    t0 = time.monotonic()
    mapped = map_torch_libraries()
    t1 = time.monotonic()
    ordinal = cuda_ordinal(device)
    context = open_cuda_context(ordinal) if ordinal is not None else False
    return {"libraries": mapped, "libraries_s": round(t1 - t0, 3), "cuda_context": context,
            "cuda_context_s": round(time.monotonic() - t1, 3)}
