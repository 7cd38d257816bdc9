"""The engine with the DiT's input cache on and off: the same frames over two chunks and a session change."""

from __future__ import annotations

import numpy as np
import torch
from safetensors.torch import load_file

from support.chunk_fixture import CHUNK, fixture_engine

torch.set_num_threads(1)


def _run(cache: bool) -> tuple[list[np.ndarray], dict]:
    eng, inputs = fixture_engine(cache_inputs=cache)
    noises = [load_file(CHUNK / f"chunk{k}.safetensors") for k in range(2)]
    audio = [inputs["audio_all"][:, 8 * k : 8 * k + 13] for k in range(2)]
    frames = [eng.generate_chunk(audio[k], noise=[noises[k][f"noise_{i}"] for i in range(5)]) for k in range(2)]
    # A new avatar session (other prompt context, same image): chunk 0 again with the same noise.
    s = eng.session
    other = s.context.flip(0) * -1.0
    eng.start_session(s.image_u8, "other prompt", context=other, clip_fea=s.clip_fea)
    frames.append(eng.generate_chunk(audio[0], noise=[noises[0][f"noise_{i}"] for i in range(5)]))
    return frames, dict(eng.models.dit.input_cache.hits)


def test_two_chunks_and_a_session_change_give_the_same_frames_with_and_without_the_cache() -> None:
    cached, hits = _run(True)
    uncached, hits_off = _run(False)
    assert hits["session"] == 3 and hits["audio"] == 3  # new session: the cache was cleared, then 3 of 4 steps hit
    assert hits_off == {"session": 0, "audio": 0}
    for k, (a, b) in enumerate(zip(cached, uncached)):
        assert np.array_equal(a, b), f"chunk {k}"
    assert not np.array_equal(cached[2], cached[0])  # the new context reached the model
