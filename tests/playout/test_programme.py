"""Programme playlists: M3U/TOML parsing, validation (missing/corrupt clips skipped), reload on change, shuffle."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from flashtalk_live.playout.programme import ClipDecodeError, Programme, decode_audio

from support.queue_fakes import labelled_wav
from support.settings import load_programme, section_settings

REPO = Path(__file__).resolve().parents[2]


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _clips(d: Path, names=("a", "b", "c")) -> None:
    for i, n in enumerate(names, 1):
        labelled_wav(d / f"{n}.wav", i, 0.1)


def _ids(prog: Programme, n: int) -> list[str]:
    out = []
    for _ in range(n):
        it = prog.next_item()
        out.append("None" if it is None else (f"pause:{it.pause_s:g}" if it.kind == "pause" else it.segment_id))
    return out


def _video_only_mp4(path: Path) -> None:
    import av

    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("mpeg4", rate=25)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        for i in range(3):
            f = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
            f.pts = i
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)


def test_m3u_with_missing_corrupt_and_odd_lines(tmp_path):
    _clips(tmp_path)
    (tmp_path / "corrupt.mp3").write_bytes(b"ID3\x03\x00 definitely not audio" * 10)
    shutil.copy(REPO / "flashtalk_live/assets/portrait.png", tmp_path / "image.png")  # decodes, but no audio
    _video_only_mp4(tmp_path / "video.mp4")
    (tmp_path / "sub").mkdir()
    labelled_wav(tmp_path / "sub" / "d.wav", 4, 0.1)
    (tmp_path / "list.m3u").write_text(
        "\ufeff#EXTM3U\n"
        "#EXT-X-PAUSE:3\n"  # before any clip: reported, ignored
        "#EXT-X-DEFAULT-PAUSE:0.25\n"
        "#EXTINF:1,First Pitch\n"
        "a.wav\n"
        "missing.wav\n"
        "corrupt.mp3\n"
        "image.png\n"
        "video.mp4\n"
        "https://example.com/remote.mp3\n"
        "b.wav\n"
        "#EXT-X-PAUSE:nonsense\n"
        "#EXT-X-PAUSE:1.5\n"
        "  sub/d.wav  \n"
        "# a plain comment\n"
    )
    prog = load_programme(tmp_path / "list.m3u", section_settings(programme={}))
    assert [(e.name, e.pause_s) for e in prog.entries] == [("First Pitch", 0.25), ("b", 1.5), ("d", 0.25)]
    skipped = {Path(p).name: why for p, why in prog.skipped}
    assert set(skipped) == {"missing.wav", "corrupt.mp3", "image.png", "video.mp4"}
    assert "not found" in skipped["missing.wav"] and "unrecognised audio format" in skipped["image.png"]
    assert "no audio stream" in skipped["video.mp4"] and "cannot decode" in skipped["corrupt.mp3"]
    assert any("only local files" in p for p in prog.problems)
    assert any("before any clip" in p for p in prog.problems)
    assert any("nonsense" in p for p in prog.problems)
    assert _ids(prog, 7) == [
        "programme:First Pitch:1", "pause:0.25", "programme:b:2", "pause:1.5", "programme:d:3", "pause:0.25",
        "programme:First Pitch:4",
    ]


def test_toml_playlist_and_its_errors(tmp_path):
    _clips(tmp_path)
    (tmp_path / "p.toml").write_text(
        'shuffle = false\npause_s = 0.5\ncolour = "red"\n'
        '[[clip]]\npath = "a.wav"\nname = "alpha"\npause_s = 2\n'
        '[[clip]]\nname = "no path"\n'
        '[[clip]]\npath = "b.wav"\nvolume = 3\n'
        '[[clip]]\npath = "c.wav"\npause_s = -1\n'
        '[[clip]]\npath = "gone.ogg"\n'
    )
    prog = load_programme(tmp_path / "p.toml", section_settings(programme=dict(shuffle=True, pause_seconds=9)))
    assert not prog.shuffle  # the file's top-level setting wins over programme.shuffle
    assert [(e.name, e.pause_s) for e in prog.entries] == [("alpha", 2.0), ("b", 0.5), ("c", 0.5)]
    assert [Path(p).name for p, _ in prog.skipped] == ["gone.ogg"]
    text = "\n".join(prog.problems)
    for needle in ("'colour'", "missing 'path'", "'volume'", "-1"):
        assert needle in text
    assert _ids(prog, 3) == ["programme:alpha:1", "pause:2", "programme:b:2"]


def test_settings_defaults_apply_when_the_file_is_silent(tmp_path):
    _clips(tmp_path, ("a",))
    (tmp_path / "p.m3u").write_text("#EXTM3U\na.wav\n")
    prog = load_programme(tmp_path / "p.m3u", section_settings(programme=dict(pause_seconds=0.75)))
    assert _ids(prog, 4) == ["programme:a:1", "pause:0.75", "programme:a:2", "pause:0.75"]


@pytest.mark.parametrize("content,name", [("[[clip]\npath=", "broken.toml"), ("hello", "list.txt"), ("clip = 3", "x.toml")])
def test_unusable_playlist_is_never_fatal(tmp_path, content, name):
    (tmp_path / name).write_text(content)
    prog = load_programme(tmp_path / name, section_settings(programme={}))
    assert prog.entries == [] and prog.next_item() is None and prog.problems


def test_no_playlist_and_missing_playlist_mean_idle_until_it_appears(tmp_path):
    assert load_programme(None, section_settings(programme={})).next_item() is None
    clock = FakeClock()
    _clips(tmp_path, ("a",))
    path = tmp_path / "later.m3u"
    prog = load_programme(path, section_settings(programme=dict(reload_check_seconds=2)), clock=clock)
    assert prog.next_item() is None
    path.write_text("#EXTM3U\na.wav\n")
    clock.t += 1.0
    assert prog.next_item() is None  # not checked again before reload_check_seconds
    clock.t += 1.5
    assert prog.next_item().segment_id == "programme:a:1"


def test_reload_on_change_resumes_after_the_last_clip(tmp_path):
    _clips(tmp_path, ("a", "b", "c", "d"))
    path = tmp_path / "p.m3u"
    path.write_text("#EXTM3U\na.wav\nb.wav\nc.wav\n")
    clock = FakeClock()
    prog = load_programme(path, section_settings(programme=dict(reload_check_seconds=5)), clock=clock)
    assert _ids(prog, 2) == ["programme:a:1", "programme:b:2"]
    path.write_text("#EXTM3U\nd.wav\nb.wav\na.wav\nc.wav\n")
    os.utime(path, ns=(1, 10**18))  # a definitely different mtime
    assert _ids(prog, 1) == ["programme:c:3"]  # within reload_check_seconds: the old list still plays
    clock.t += 5
    # Reloaded: the last clip played (c) is 4th in the new list, so the programme continues with the new list's start.
    assert _ids(prog, 3) == ["programme:d:4", "programme:b:5", "programme:a:6"]
    assert prog.loads == 2
    # An edit that lists nothing empties the programme (idle silence): that is what the operator asked for.
    path.write_text("#EXTM3U\n# everything removed\n")
    os.utime(path, ns=(1, 2 * 10**18))
    clock.t += 5
    assert prog.next_item() is None and prog.entries == [] and prog.loads == 3


def test_reload_keeps_the_old_list_when_the_new_file_cannot_be_parsed(tmp_path):
    _clips(tmp_path, ("a", "b"))
    path = tmp_path / "p.toml"
    path.write_text('[[clip]]\npath="a.wav"\n[[clip]]\npath="b.wav"\n')
    clock = FakeClock()
    prog = load_programme(path, section_settings(programme=dict(reload_check_seconds=1)), clock=clock)
    assert _ids(prog, 1) == ["programme:a:1"]
    path.write_text("[[clip]\npath=")
    os.utime(path, ns=(1, 10**18))
    clock.t += 1
    assert _ids(prog, 2) == ["programme:b:2", "programme:a:3"]
    assert prog.loads == 1 and "not valid TOML" in prog.problems[0]
    path.unlink()  # a vanished playlist also keeps the programme going
    clock.t += 1
    assert _ids(prog, 1) == ["programme:b:4"]


def test_shuffle_reshuffles_every_cycle_without_back_to_back_repeats(tmp_path):
    names = [f"c{i}" for i in range(6)]
    _clips(tmp_path, names)
    (tmp_path / "s.m3u").write_text("#EXTM3U\n#EXT-X-SHUFFLE:yes\n" + "".join(f"{n}.wav\n" for n in names))
    prog = load_programme(tmp_path / "s.m3u", section_settings(programme={}), rng=random.Random(7))
    assert prog.shuffle
    played = [it.name for it in (prog.next_item() for _ in range(60))]
    cycles = [played[i : i + 6] for i in range(0, 60, 6)]
    assert all(sorted(c) == sorted(names) for c in cycles)  # every cycle plays each clip exactly once
    assert len({tuple(c) for c in cycles}) > 1  # and the order changes between cycles
    assert all(a != b for a, b in zip(played, played[1:]))
    assert prog.cycle == 10


def test_clip_that_breaks_after_load_is_skipped_and_all_broken_means_idle(tmp_path):
    _clips(tmp_path, ("a", "b"))
    (tmp_path / "p.m3u").write_text("#EXTM3U\na.wav\nb.wav\n")
    prog = load_programme(tmp_path / "p.m3u", section_settings(programme={}))
    (tmp_path / "a.wav").write_bytes(b"RIFF garbage")
    assert _ids(prog, 2) == ["programme:b:1", "programme:b:2"]
    (tmp_path / "b.wav").unlink()
    assert prog.next_item() is None and prog.next_item() is None


def test_rewind_replays_a_cut_clip_before_its_pause(tmp_path):
    _clips(tmp_path, ("a", "b"))
    (tmp_path / "p.m3u").write_text("#EXTM3U\n#EXT-X-DEFAULT-PAUSE:1\na.wav\nb.wav\n")
    prog = load_programme(tmp_path / "p.m3u", section_settings(programme={}))
    a = prog.next_item()
    prog.rewind(a)
    assert _ids(prog, 4) == ["programme:a:2", "pause:1", "programme:b:3", "pause:1"]


def test_decoder_formats_and_rates():
    for name, seconds in [("pitch-a.m4a", 4.0), ("pitch-b.ogg", 3.5), ("pitch-c.wav", 3.0)]:
        d = decode_audio(REPO / "playlists/clips" / name, 48000, 2)
        assert d.broadcast.dtype == np.float32 and d.broadcast.shape[1] == 2
        assert abs(d.duration_s - seconds) < 0.05, name
        assert abs(d.model.shape[0] - d.broadcast.shape[0] / 3) <= 64, name  # 16 kHz for the same span
        assert 0.05 < np.abs(d.broadcast).max() <= 1.0
    mono = decode_audio(REPO / "playlists/clips/pitch-c.wav", 44100, 1)
    assert mono.broadcast.shape == (44100 * 3, 1)
    with pytest.raises(ClipDecodeError, match="limit"):
        decode_audio(REPO / "playlists/clips/pitch-a.m4a", 48000, 2, max_seconds=1.0)


@pytest.mark.parametrize("name", ["example.m3u", "example.toml"])
def test_example_playlists_load_cleanly(name):
    prog = load_programme(REPO / "playlists" / name, section_settings(programme={}))
    assert len(prog.entries) == 3 and not prog.skipped and not prog.problems
    assert 9 < prog.total_seconds < 12
