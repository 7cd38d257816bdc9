"""torch's native libraries mapped before `import torch` (flashtalk_live/native_preload.py), in a fresh process."""

import json
import subprocess
import sys

import pytest

from flashtalk_live.native_preload import cuda_ordinal

PROBE = r"""
import json, sys
from flashtalk_live.native_preload import preload_torch
done = preload_torch("cpu")
maps = open("/proc/self/maps").read()
mapped_before_import = "libtorch_cpu.so" in maps and "torch" not in sys.modules
import torch
print(json.dumps({"done": done, "mapped_before_import": mapped_before_import,
                  "sum": float(torch.ones(3).sum()), "one_copy": maps.count("libtorch_cpu.so") ==
                  open("/proc/self/maps").read().count("libtorch_cpu.so")}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="dlopen and /proc/self/maps")
def test_libraries_are_mapped_before_the_import_and_torch_then_works():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert "libtorch_global_deps.so" in r["done"]["libraries"] and "libtorch_cpu.so" in r["done"]["libraries"]
    assert r["mapped_before_import"]
    assert r["one_copy"], "torch's import mapped its library a second time instead of reusing the preloaded one"
    assert r["sum"] == 3.0
    assert r["done"]["cuda_context"] is False  # a CPU device opens no context


def test_cuda_ordinal_reads_torch_device_strings():
    assert cuda_ordinal("cuda") == 0
    assert cuda_ordinal("cuda:3") == 3
    assert cuda_ordinal("cpu") is None
    assert cuda_ordinal("meta") is None
    assert cuda_ordinal("cuda:x") is None  # left to torch's own error at the build
