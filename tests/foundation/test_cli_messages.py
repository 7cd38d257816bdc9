"""Issue 21's operator papercuts in the command line: a typo'd config key names the key it meant, `render --help`
lists the profile table, an unknown argument gets its sub-command's usage, and --output/--output-file say what they
replace."""

from __future__ import annotations

import subprocess
import sys

import pytest

from support.paths import child_env


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flashtalk_live", *args], capture_output=True, text=True,
                          env=child_env() | (env or {}), timeout=120)


@pytest.mark.timeout(120)
def test_a_typo_d_key_names_the_key_it_meant(tmp_path):
    cfg = tmp_path / "room.toml"
    cfg.write_text('[encoder]\npresett = "fast"\n')
    sd = ["--state-dir", str(tmp_path / "s")]
    cases = [
        (["-c", str(cfg)], {}, "encoder.presett: not a setting; did you mean encoder.preset?"),
        (["--set", "statedir=x"], {}, "statedir: not a setting; did you mean state_dir?"),
        ([], {"FLASHTALK_LIVE_VIDEO__WIDHT": "448"}, "video.widht: not a setting; did you mean video.width?"),
        (["--set", 'outputs=[{name="a", url="/tmp/a.flv", segment_secs=3}]'], {},
         "did you mean outputs.segment_seconds?"),
        (["--set", "video.zzzz=1"], {}, "video.zzzz: not a setting; [video] has: width, height, fps"),
    ]
    for args, env, expected in cases:
        r = cli("config", "show", *sd, *args, env=env)
        assert r.returncode == 2 and expected in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Extra inputs" not in r.stderr, r.stderr


@pytest.mark.timeout(120)
def test_render_help_lists_every_profile_of_the_table():
    from flashtalk_live.engine.profile import PROFILES

    r = cli("render", "--help")
    assert r.returncode == 0, r.stderr
    flat = " ".join(r.stdout.split())
    for name, p in PROFILES.items():
        assert f"{name} ({p.height}x{p.width}, {p.sample_steps} steps)" in flat, (name, flat)


@pytest.mark.timeout(120)
def test_an_unknown_argument_gets_its_sub_command_usage_and_the_option_meant(tmp_path):
    r = cli("run", "--outptu", str(tmp_path / "x.flv"))
    assert r.returncode == 2
    assert r.stderr.startswith("usage: flashtalk-live run ") and "COMMAND ..." not in r.stderr, r.stderr
    assert "unrecognized arguments: --outptu" in r.stderr and "did you mean --output for --outptu?" in r.stderr
    r = cli("config", "show", "--jsn")
    assert r.returncode == 2 and r.stderr.startswith("usage: flashtalk-live config show ")
    assert "did you mean --json" in r.stderr
    r = cli("--bogus")  # no sub-command: the top level's usage, as before
    assert r.returncode == 2 and "usage: flashtalk-live [-h]" in r.stderr


@pytest.mark.timeout(120)
def test_output_flags_say_which_configured_outputs_they_replace(tmp_path):
    sd = tmp_path / "s"
    urls = tmp_path / "urls.txt"
    urls.write_text(f"{tmp_path / 'other.flv'}\n")
    for flag in (["--output", str(tmp_path / "rec.flv")], ["--output-file", str(urls)]):
        r = cli("config", "show", "--state-dir", str(sd), *flag)
        assert r.returncode == 0, r.stderr
        assert f"note: {flag[0]} replaces the configured outputs; not running: recording ({sd}/recordings/live-" \
            in r.stderr, r.stderr
    r = cli("config", "show", "--state-dir", str(sd))
    assert r.returncode == 0 and "replaces" not in r.stderr
