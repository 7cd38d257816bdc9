"""model.compile_cache_dir: torch.compile's inductor cache is put under the room's state dir before compiling."""

from __future__ import annotations

import stat

import pytest
import torch

from flashtalk_live.engine.compile_cache import INDUCTOR_CACHE_ENV, use_compile_cache
from flashtalk_live.config import load_settings


def test_the_setting_defaults_under_the_state_dir_and_is_applied_to_the_environment(tmp_path) -> None:
    s = load_settings(None, [f'state_dir="{tmp_path}"'], environ={})
    folder = s.expanded(s.model).compile_cache_dir
    assert folder == f"{tmp_path}/compile-cache"
    env: dict[str, str] = {}
    assert use_compile_cache(folder, env) == tmp_path / "compile-cache"
    assert env == {INDUCTOR_CACHE_ENV: str(tmp_path / "compile-cache")}
    assert stat.S_IMODE((tmp_path / "compile-cache").stat().st_mode) == 0o700  # compiled code is run from here
    env = {}
    assert use_compile_cache("", env) is None and env == {}  # "": torch's default stays


@pytest.mark.timeout(600)
def test_inductor_writes_its_cache_into_the_folder(tmp_path, monkeypatch) -> None:
    """A real inductor compile (CPU, C++) after use_compile_cache lands in the folder: what a restart reuses."""
    monkeypatch.setenv(INDUCTOR_CACHE_ENV, str(tmp_path / "unused"))  # restored after the test
    folder = use_compile_cache(tmp_path / "state" / "compile-cache")
    torch._dynamo.reset()

    @torch.compile(dynamic=False)
    def f(x: torch.Tensor) -> torch.Tensor:
        return torch.sin(x) * 2 + x.cos()

    x = torch.randn(64)
    assert torch.allclose(f(x), torch.sin(x) * 2 + x.cos(), atol=1e-6)
    written = [p for p in folder.rglob("*") if p.is_file()]
    assert written, "inductor wrote nothing under the configured cache folder"
    assert not (tmp_path / "unused").exists()
    torch._dynamo.reset()
