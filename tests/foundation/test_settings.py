"""Settings: file < environment < flags, clear errors naming field/value/expectation, secrets masked."""

import json
import os
import subprocess
import sys

import pytest

from flashtalk_live.secrets import mask_url
from flashtalk_live.settings import ConfigError, masked_dump
from flashtalk_live.config import load_settings


def test_defaults_are_the_embedded_demo():
    s = load_settings(environ={})
    assert s.renderer.kind == "still"
    assert s.samples_per_frame == 1920
    assert s.outputs[0].name == "recording"


def test_priority_file_env_flags(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[encoder]\npreset = "slow"\nvideo_bitrate = 1000000\n[video]\nfps = 25\n')
    s = load_settings(cfg, environ={})
    assert (s.encoder.preset, s.encoder.video_bitrate) == ("slow", 1_000_000)
    env = {"FLASHTALK_LIVE_ENCODER__PRESET": "fast", "FLASHTALK_LIVE_VIDEO__FPS": "30"}
    s = load_settings(cfg, environ=env)
    assert (s.encoder.preset, s.video.fps) == ("fast", 30)
    s = load_settings(cfg, ["encoder.preset=ultrafast"], environ=env)
    assert s.encoder.preset == "ultrafast"


def test_invalid_file_names_field_value_and_expectation(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[video]\nwidth = 447\n[encoder]\naudio_rate = 16000\n')
    with pytest.raises(ConfigError) as e:
        load_settings(cfg, environ={})
    msg = str(e.value)
    assert "video.width = 447" in msg and "even" in msg
    assert "encoder.audio_rate = 16000" in msg and "44100" in msg


def test_unknown_key_and_bad_toml_are_reported(tmp_path):
    cfg = tmp_path / "typo.toml"
    cfg.write_text('[encoder]\npresett = "fast"\n')
    with pytest.raises(ConfigError, match="encoder.presett"):
        load_settings(cfg, environ={})
    cfg.write_text("[encoder\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(cfg, environ={})
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.toml", environ={})


@pytest.mark.parametrize(
    "url,masked",
    [
        ("rtmp://push.example.com/live/secret-key", "rtmp://push.example.com/live/****"),
        ("rtmps://u:p@host:443/app/key?token=abc", "rtmps://***@host:443/app/****?****"),
        ("/tmp/rec.flv", "/tmp/rec.flv"),
    ],
)
def test_mask_url(url, masked):
    assert mask_url(url) == masked


def test_config_show_masks_secrets(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[outputs]]\nname = "yt"\nurl = "rtmp://a.example/live2/TOPSECRET"\n')
    out = subprocess.run(
        [sys.executable, "-m", "flashtalk_live", "config", "show", "--json", "-c", str(cfg)],
        capture_output=True, text=True, check=True,
    ).stdout
    assert "TOPSECRET" not in out
    assert json.loads(out)["outputs"][0]["url"] == "rtmp://a.example/live2/****"
    assert masked_dump(load_settings(cfg, environ={}))["outputs"][0]["url"].endswith("****")


def test_shipped_configs_are_valid():
    for name in ("configs/default.toml", "configs/flashtalk-14b.toml"):
        load_settings(name, environ={})


def test_a_config_path_that_is_a_folder_unreadable_or_not_text_is_a_config_error(tmp_path):
    """The operator's mistake (-c naming a folder, a file the daemon may not read, a binary file) is ConfigError:
    exit 2 and one line naming the file, not an IsADirectoryError/UnicodeDecodeError (exit 1)."""
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe[x")
    unreadable = tmp_path / "unreadable.toml"
    unreadable.write_text("state_dir = '/x'\n")
    unreadable.chmod(0)
    cases = [tmp_path, binary] + ([unreadable] if os.geteuid() != 0 else [])
    for path in cases:
        with pytest.raises(ConfigError, match=str(path)):
            load_settings(path, environ={})


@pytest.mark.parametrize("value", ['{"name": "a", "url": "rtmp://h/live SECRETKEY"}',
                                   '["rtmp://h/live SECRETKEY"]',
                                   '[{"name": "a", "url": {"x": "rtmp://h/live SECRETKEY"}}]'])
def test_a_stream_key_after_a_stray_space_is_masked_in_any_wrong_shaped_value(value):
    """An outputs value of the wrong shape (an object for a list, a bare URL for a table) is echoed in the error
    line; a URL in it was masked only up to its first space, so 'rtmp://h/live KEY' showed the key."""
    with pytest.raises(ConfigError) as e:
        load_settings(environ={"FLASHTALK_LIVE_OUTPUTS": value})
    assert "SECRETKEY" not in str(e.value), str(e.value)


@pytest.mark.parametrize("environ,overrides", [({"FLASHTALK_LIVE_CONSOLE__TOKEN": "98765432123456789"}, []),
                                               ({}, ['console.token=["s3cr3t98765432123456789"]'])])
def test_a_console_token_of_the_wrong_type_is_not_echoed_in_the_error(environ, overrides):
    """A numeric token from the environment (JSON makes it an int) or a token written as a list was shown whole in
    the one-line error: `console.token = 98765432123456789: Input should be a valid string`."""
    with pytest.raises(ConfigError) as e:
        load_settings(overrides=overrides, environ=environ)
    assert "98765432123456789" not in str(e.value) and "console.token" in str(e.value), str(e.value)


def test_a_console_token_on_the_command_line_is_refused_like_a_stream_key(capsys):
    """`--set console.token=...` put the console's bearer token in ps for every user; stream keys on argv are refused
    (exit 2, one masked line), the token was taken."""
    from flashtalk_live.cli import main as cli_main

    assert cli_main(["config", "show", "--set", 'console.token="tok-98765432123456789"']) == 2
    out = capsys.readouterr()
    assert "98765432123456789" not in out.out + out.err and "console.token" in out.err, out.err


def test_an_output_file_that_is_not_text_is_a_config_error(tmp_path, capsys):
    from flashtalk_live.cli import main as cli_main

    f = tmp_path / "outputs.bin"
    f.write_bytes(b"\xff\xfertmp://h/live/KEY\n")
    assert cli_main(["config", "show", "--output-file", str(f)]) == 2
    err = capsys.readouterr().err
    assert "--output-file" in err and len(err.strip().splitlines()) == 1, err
