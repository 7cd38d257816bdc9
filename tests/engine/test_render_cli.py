"""`flashtalk-live render` on a fake tiny release: a real MP4 with H.264 + AAC and the audio's frame count."""

from __future__ import annotations

import math
import wave
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from flashtalk_live.checkpoints.fake import write_fake_release
from flashtalk_live.cli import main
from flashtalk_live.images import default_portrait, encode_png

torch.set_num_threads(1)


@pytest.mark.timeout(180)
def test_render_writes_h264_aac_mp4(tmp_path: Path, capsys) -> None:
    rel = write_fake_release(tmp_path / "models")
    (tmp_path / "tiny.toml").write_text('base = "quality"\nheight = 64\nwidth = 32\nframe_num = 13\nmotion_frames = 5\n')
    img = tmp_path / "face.png"
    img.write_bytes(encode_png(default_portrait()))
    wav = tmp_path / "speech.wav"
    seconds = 1.3
    t = np.arange(int(16000 * seconds)) / 16000
    pcm = (0.3 * np.sin(2 * np.pi * 180 * t) * 32767).astype(np.int16)
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes(pcm.tobytes())
    out = tmp_path / "out.mp4"
    rc = main(["render", "--image", str(img), "--audio", str(wav), "--profile", str(tmp_path / "tiny.toml"),
               "-o", str(out), "--timing",
               "--set", f'model.weights_dir="{rel.weights_dir}"', "--set", f'model.wav2vec_dir="{rel.wav2vec_dir}"',
               "--set", 'model.device="cpu"', "--set", 'model.dtype="float32"', "--set", "video.width=64",
               "--set", "video.height=96", "--set", f'state_dir="{tmp_path / "state"}"'])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    print(captured.out, captured.err[-800:])
    assert "dit_step_0" in captured.err  # --timing prints the stages
    with av.open(str(out)) as c:
        vs, as_ = c.streams.video[0], c.streams.audio[0]
        assert vs.codec_context.name == "h264" and (vs.width, vs.height) == (64, 96)
        assert as_.codec_context.name == "aac"
        frames = sum(1 for _ in c.decode(vs))
    assert frames == math.ceil(seconds * 25)


def test_render_needs_weights(tmp_path: Path, capsys) -> None:
    img = tmp_path / "face.png"
    img.write_bytes(encode_png(default_portrait()))
    rc = main(["render", "--image", str(img), "--audio", str(img), "-o", str(tmp_path / "o.mp4")])
    assert rc == 1 and "weights_dir" in capsys.readouterr().err
