"""The image's /etc/flashtalk-live/room.toml (deploy/container/room.toml) is the embedded default with the state dir
on the image's volume, and the Containerfile declares what a room's pod relies on. No image is built here
(tests/deploy/test_container_image.py builds and runs it)."""

from __future__ import annotations

import re
from pathlib import Path

from flashtalk_live.config import load_settings
from flashtalk_live.settings import read_toml

CONTAINER = Path(__file__).resolve().parents[2] / "deploy" / "container"
STATE_VOLUME = "/var/lib/flashtalk-live"


def test_room_toml_is_the_embedded_default_with_the_state_dir_on_the_volume(tmp_path):
    data = read_toml(CONTAINER / "room.toml", "room.toml", ValueError)
    assert data == {"state_dir": STATE_VOLUME}, "room.toml sets only the state dir; a room's own config changes more"
    room = load_settings(CONTAINER / "room.toml", environ={}).model_dump(mode="json")
    default = load_settings(None, environ={"XDG_STATE_HOME": str(tmp_path)}).model_dump(mode="json")
    assert room.pop("state_dir") == STATE_VOLUME
    default.pop("state_dir")
    # a config file names its room after itself (FLASHTALK_LIVE_ROOM names it otherwise); the embedded default has none
    assert (room.pop("room"), default.pop("room")) == ("room", "")
    assert room == default


def test_containerfile_declares_the_volumes_user_stop_signal_and_entrypoint_the_pod_relies_on():
    text = (CONTAINER / "Containerfile").read_text()
    lines = [ln.strip() for ln in text.replace("\\\n", " ").splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert re.search(r'^VOLUME \["/var/lib/flashtalk-live", "/weights"\]$', "\n".join(lines), re.M)
    assert "STOPSIGNAL SIGTERM" in lines
    assert [ln for ln in lines if ln.startswith("USER ")] == ["USER flashtalk"]
    assert 'ENTRYPOINT ["/usr/bin/tini", "--", "flashtalk-live"]' in lines
    assert 'CMD ["run", "-c", "/etc/flashtalk-live/room.toml"]' in lines
    assert lines[0].startswith("ARG BASE=") and lines[1] == "FROM ${BASE}"
    # no weights in the image: nothing is copied but the package, its metadata, the demo programme and room.toml
    copies = [ln for ln in lines if ln.startswith(("COPY", "ADD"))]
    assert all(ln.startswith("COPY ") for ln in copies)
    sources = {src for ln in copies for src in ln.split()[1:-1]}
    assert sources == {"pyproject.toml", "README.md", "flashtalk_live", "playlists", "deploy/container/room.toml"}


def test_the_build_context_holds_only_what_the_containerfile_copies():
    for name in (".containerignore", ".dockerignore"):
        rules = [ln for ln in (CONTAINER.parents[1] / name).read_text().splitlines() if ln and not ln.startswith("#")]
        assert rules[0] == "*"
        assert {r[1:].rstrip("/") for r in rules if r.startswith("!")} == {
            "pyproject.toml", "README.md", "flashtalk_live", "playlists", "deploy/container/room.toml"}
