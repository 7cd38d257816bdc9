"""Shared fixtures: one fake tiny release per session, and writable copies of it to break."""

from __future__ import annotations

import shutil

import pytest
import torch

from flashtalk_live.checkpoints.fake import FakeRelease, write_fake_release

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def fake_release(tmp_path_factory) -> FakeRelease:
    return write_fake_release(tmp_path_factory.mktemp("release"), shards=3, seed=7)


@pytest.fixture
def release_copy(fake_release, tmp_path) -> FakeRelease:
    """A private copy of the fake release that a test may damage."""
    root = tmp_path / "copy"
    shutil.copytree(fake_release.root, root)
    return FakeRelease(root, root / fake_release.weights_dir.name, root / fake_release.wav2vec_dir.name,
                       fake_release.dit, fake_release.vae, fake_release.clip, fake_release.t5,
                       fake_release.wav2vec, fake_release.state_dicts)
