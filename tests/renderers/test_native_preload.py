"""torch's native libraries mapped before `import torch` (flashtalk_live/native_preload.py), in a fresh process."""

import json
import os
import subprocess
import sys

import pytest

from flashtalk_live.native_preload import ALLOC_CONF_ENVS, cuda_ordinal, set_allocator_conf

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


ALLOC_PROBE = r"""
import json, os
from flashtalk_live.native_preload import set_allocator_conf
from flashtalk_live.settings import ModelSettings
chosen = set_allocator_conf(ModelSettings().cuda_alloc_conf)
import torch
print(json.dumps({"chosen": chosen, "torch": torch._C._accelerator_getAllocatorSettings()}))
"""


@pytest.mark.skipif(not hasattr(__import__("torch")._C, "_accelerator_getAllocatorSettings"),
                    reason="this torch does not report its allocator settings")
@pytest.mark.parametrize("name, operator, torch_reads", [
    (None, None, "expandable_segments:True"),
    ("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:256", "max_split_size_mb:256"),
    ("PYTORCH_ALLOC_CONF", "max_split_size_mb:128", "max_split_size_mb:128")])
def test_the_allocator_setting_reaches_torch_unless_the_operator_set_it(name, operator, torch_reads):
    """model.cuda_alloc_conf is in the environment before torch reads it (at its import); an operator's own
    PYTORCH_ALLOC_CONF or PYTORCH_CUDA_ALLOC_CONF is left as it is."""
    env = {k: v for k, v in os.environ.items() if k not in ALLOC_CONF_ENVS}
    if name is not None:
        env[name] = operator
    out = subprocess.run([sys.executable, "-c", ALLOC_PROBE], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"chosen": torch_reads, "torch": torch_reads}


def test_an_empty_allocator_setting_leaves_torch_its_default():
    environ: dict[str, str] = {}
    assert set_allocator_conf("", environ) is None and environ == {}
    assert set_allocator_conf("expandable_segments:True", environ) == "expandable_segments:True"
