"""The command line as an operator runs it: verify-parity, models verify, models download (offline paths only)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from flashtalk_live.checkpoints import parity
from flashtalk_live.checkpoints.download import DownloadError, download_release, hub_offline

from support.checkpoints import truncate
from support.ports import free_port

PARITY = Path(__file__).resolve().parents[1] / "fixtures" / "parity"
REPO = Path(__file__).resolve().parents[2]


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_DISABLE_TELEMETRY": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "flashtalk_live.cli", *args], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------------------------------ verify-parity


@pytest.mark.timeout(300)
def test_verify_parity_passes_on_the_project_fixtures(tmp_path):
    present = sorted(p.name for p in PARITY.iterdir() if p.is_dir())
    r = cli("verify-parity", str(PARITY), "--threads", "1", "--json", str(tmp_path / "rows.json"))
    print(r.stdout, r.stderr[-2000:])
    assert r.returncode == 0, r.stdout + r.stderr
    rows = json.loads((tmp_path / "rows.json").read_text())["rows"]
    ran = {row["module"] for row in rows if row["status"] == "pass"}
    assert ran == set(present), "every fixture folder has a check that ran (chunk/ through the engine's plugin)"
    assert {"dit", "vae", "clip_visual", "t5", "audio", "colour", "taehv"} <= ran, "a module's fixtures are missing"
    assert not [row for row in rows if row["status"] in ("fail", "error")]
    cases = {(row["module"], row["case"]) for row in rows}
    for want in [("dit", "case_a out"), ("dit", "case_b out"), ("vae", "encode latents"), ("vae", "decode"),
                 ("vae", "motion_clip encode"), ("vae", "motion_clip decode"), ("clip_visual", "features (31 of 32 blocks)"),
                 ("t5", "context (trimmed)"), ("audio", "once windows"), ("audio", "stream chunk0 windows"),
                 ("audio", "stream chunk1 windows"), ("colour", "strength 1.0"), ("colour", "strength 0.5"),
                 ("taehv", "decode parallel"), ("taehv", "decode sequential"), ("taehv", "decode streaming")]:
        assert want in cases
    assert all(row["tol_rel_l2"] == 1e-5 and row["tol_max_abs"] == 1e-4 for row in rows
               if row["status"] == "pass" and row["module"] not in ("chunk", "taehv"))
    assert all(row["tol_rel_l2"] == 1e-5 and row["tol_max_abs"] == 1e-5 for row in rows if row["module"] == "taehv")
    header = next(line for line in r.stdout.splitlines() if line.startswith("module"))
    assert header.split() == ["module", "case", "max_abs", "rel_l2", "tolerance", "result"]


@pytest.mark.timeout(120)
def test_verify_parity_fails_on_a_wrong_output_and_skips_what_is_absent(tmp_path):
    shutil.copytree(PARITY / "colour", tmp_path / "colour")
    io = load_file(str(tmp_path / "colour" / "io.safetensors"))
    io["out_strength_0_5"] = io["out_strength_0_5"] + 1e-3  # max abs 1e-3 > 1e-4
    save_file(io, str(tmp_path / "colour" / "io.safetensors"))
    (tmp_path / "dit").mkdir()  # present but empty: skipped with the reason
    r = cli("verify-parity", str(tmp_path), "--threads", "1")
    print(r.stdout)
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    assert any(line.startswith("colour") and "strength 1.0" in line and line.rstrip().endswith("pass") for line in lines)
    assert any(line.startswith("colour") and "strength 0.5" in line and "FAIL" in line for line in lines)
    assert any(line.startswith("dit") and "skip" in line and "dit/config.json absent" in line for line in lines)
    assert any(line.startswith("vae") and "vae/ absent" in line for line in lines)
    assert "1 passed, 1 failed, 0 errors" in r.stdout


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    """The same command line in-process (cheap argument and error paths)."""
    from flashtalk_live.cli import main

    try:
        rc = main(list(args))
    except SystemExit as e:  # argparse errors
        rc = int(e.code)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_verify_parity_on_a_folder_without_fixtures(tmp_path, capsys):
    rc, out, _ = run_main(capsys, "verify-parity", str(tmp_path))
    assert rc == 2 and "nothing was checked" in out
    rc, _, err = run_main(capsys, "verify-parity", str(tmp_path / "missing"))
    assert rc == 1 and "parity fixture folder not found" in err
    rc, _, err = run_main(capsys, "verify-parity", str(tmp_path), "--only", "nonsense")
    assert rc == 1 and "unknown check(s) ['nonsense']" in err


def test_register_check_hook_runs_a_new_fixture_folder(tmp_path):
    (tmp_path / "chunk").mkdir()
    save_file({"a": torch.ones(3)}, str(tmp_path / "chunk" / "x.safetensors"))

    def check_chunk(ctx):
        t = ctx.tensors("x.safetensors")
        yield ctx.compare("exact", t["a"], torch.ones(3))
        yield ctx.compare("off", t["a"] * 1.1, torch.ones(3), max_abs=None, rel_l2=2e-5)
        ctx.tensors("absent.safetensors")  # raises SkipCheck

    parity.register_check("chunk_test", check_chunk, folder="chunk")
    try:
        rep = parity.run_parity(tmp_path)
    finally:
        parity.unregister_check("chunk_test")
    rows = [(r.module, r.case, r.status) for r in rep.rows if r.module == "chunk_test"]
    assert rows == [("chunk_test", "exact", "pass"), ("chunk_test", "off", "fail"),
                    ("chunk_test", "*", "skip")]
    assert not rep.ok and "chunk/absent.safetensors absent" in rep.format()
    assert "chunk_test" not in parity.registered_checks()


def test_a_crashing_check_is_an_error_row(tmp_path):
    (tmp_path / "boom").mkdir()

    def boom(ctx):
        raise RuntimeError("kaputt")
        yield  # pragma: no cover

    parity.register_check("boom", boom)
    try:
        rep = parity.run_parity(tmp_path, only=["boom"])
    finally:
        parity.unregister_check("boom")
    assert [(r.status, r.note) for r in rep.rows] == [("error", "RuntimeError: kaputt")]


def test_compare_tensors_never_passes_nan_or_a_shape_change():
    assert parity.compare_tensors(torch.tensor([1.0, float("nan")]), torch.ones(2)) == (float("inf"), float("inf"))
    with pytest.raises(ValueError, match="shape"):
        parity.compare_tensors(torch.ones(2, 1), torch.ones(2))


# ------------------------------------------------------------------------------------------ models verify


@pytest.mark.timeout(120)
def test_models_verify_on_the_fake_release(fake_release, release_copy):
    r = cli("models", "verify", str(fake_release.root))
    print(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OK: every file matches its module" in r.stdout and "wav2vec2" in r.stdout

    truncate(release_copy.weights_dir / "models_t5_umt5-xxl-enc-bf16.pth")
    r = cli("models", "verify", str(release_copy.weights_dir), "--wav2vec", str(release_copy.wav2vec_dir))
    assert r.returncode == 1
    assert "FAIL t5" in r.stdout and "models_t5_umt5-xxl-enc-bf16.pth: not a readable torch checkpoint" in r.stdout


def test_models_verify_takes_the_folders_from_the_config(fake_release, tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[model]\nweights_dir = "{fake_release.weights_dir}"\nwav2vec_dir = "{fake_release.wav2vec_dir}"\n')
    rc, out, err = run_main(capsys, "models", "verify", "--config", str(cfg))
    assert rc == 0, out + err
    cfg.write_text("[model]\n")
    rc, _, err = run_main(capsys, "models", "verify", "--config", str(cfg))
    assert rc == 1 and "model.weights_dir is not configured" in err


# ------------------------------------------------------------------------------------------ models download


def test_download_refuses_in_offline_mode(tmp_path):
    r = cli("models", "download", str(tmp_path / "models"), env={"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 1
    assert "HF_HUB_OFFLINE" in r.stderr and "flashtalk-live models verify" in r.stderr
    assert hub_offline({"TRANSFORMERS_OFFLINE": "yes"}) and not hub_offline({"HF_HUB_OFFLINE": "0"})
    with pytest.raises(DownloadError, match="HF_HUB_OFFLINE"):
        download_release(tmp_path, environ={"HF_HUB_OFFLINE": "true"})


def test_download_argument_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    rc, _, err = run_main(capsys, "models", "download", str(tmp_path), "--only", "dit")
    assert rc == 2 and "invalid choice" in err
    rc, _, err = run_main(capsys, "models", "download", str(tmp_path), "--revision", "abc")
    assert rc == 1 and "--revision names a commit of one repository" in err
    rc, _, err = run_main(capsys, "models", "download", str(tmp_path), "--max-workers", "0")
    assert rc == 1 and "--max-workers must be >= 1" in err
    (tmp_path / "file").write_text("x")
    with pytest.raises(DownloadError, match="exists and is not a folder"):
        download_release(tmp_path / "file", environ={})
    rc, out, _ = run_main(capsys, "models", "download", "--help")
    assert rc == 0 and "HF_ENDPOINT" in out
    rc, out, _ = run_main(capsys, "models")
    assert rc == 2 and "download" in out and "verify" in out


@pytest.mark.timeout(120)
def test_download_goes_to_HF_ENDPOINT_and_reports_an_unreachable_hub(tmp_path):
    port = free_port()  # a port nobody listens on: connection refused at once, no network needed
    url = f"http://127.0.0.1:{port}"
    r = cli("models", "download", str(tmp_path / "m"), "--only", "wav2vec", env={"HF_ENDPOINT": url, "HF_HUB_OFFLINE": "0"})
    assert r.returncode == 1
    assert f"fetching TencentGameMate/chinese-wav2vec2-base from {url}" in r.stdout
    assert f"cannot reach {url} to fetch TencentGameMate/chinese-wav2vec2-base" in r.stderr


def _taehv_file_bytes(tmp_path: Path, **edit) -> bytes:
    """A tiny TAEHV decoder in the released layout (plus an encoder tensor), as a safetensors file's bytes."""
    from flashtalk_live.model.taehv import TAEHVConfig, TAEHVDecoder

    torch.manual_seed(0)
    sd = {k: v.half() for k, v in TAEHVDecoder(TAEHVConfig.tiny()).state_dict().items()}
    sd["encoder.0.weight"] = torch.zeros(8, 3, 3, 3, dtype=torch.float16)
    sd.update(edit)
    path = tmp_path / "taehv.tmp"
    save_file(sd, str(path))
    return path.read_bytes()


@pytest.fixture
def hub(tmp_path):
    from support.fake_hub import FakeHub

    good = _taehv_file_bytes(tmp_path)
    hub = FakeHub({
        # upstream's layout: .pth at the root, the converted .safetensors under safetensors/
        "madebyollin/taehv": {"safetensors/taew2_1.safetensors": good, "safetensors/taehv.safetensors": b"other",
                              "taew2_1.pth": b"x", "examples/decoded_taew2_1.mp4": b"video"},
    })
    yield hub
    hub.close()


@pytest.mark.timeout(120)
def test_download_fetches_only_the_tiny_decoder_file_and_checks_it(tmp_path, hub):
    repo, name = "madebyollin/taehv", "safetensors/taew2_1.safetensors"
    dest = tmp_path / "models"
    r = cli("models", "download", str(dest), "--only", "taehv", env={"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0"})
    assert r.returncode == 0, r.stdout + r.stderr
    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file() and ".cache" not in p.parts)
    assert files == [f"taehv/{name}"]
    assert f"{repo}: {dest / 'taehv'}" in r.stdout
    assert f"OK   taehv {dest / 'taehv' / name}" in r.stdout and "encoder ignored knowingly: 1 tensors" in r.stdout
    assert [p for m, p in hub.requests if m == "GET" and "/resolve/" in p] == [
        f"/{repo}/resolve/{hashlib.sha1(repo.encode()).hexdigest()}/{name}"]
    # the engine finds it there (taehv/ beside the weights folder)
    from flashtalk_live.checkpoints.taehv import find_taehv_file

    assert find_taehv_file(None, dest / "SoulX-FlashTalk-14B") == dest / "taehv" / name


def test_lighttae_is_no_download_choice_and_its_file_is_refused(tmp_path):
    """LightTAE decodes un-normalised latents (LightX2V's convention): removed rather than airing wrong colours."""
    from flashtalk_live.checkpoints.loader import CheckpointError
    from flashtalk_live.checkpoints.taehv import find_taehv_file

    r = cli("models", "download", str(tmp_path / "m"), "--only", "lighttaehv")
    assert r.returncode == 2 and "invalid choice: 'lighttaehv'" in r.stderr
    f = tmp_path / "lighttaew2_1.safetensors"
    f.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="LightTAE files .* un-normalised latents"):
        find_taehv_file(f, None)


@pytest.mark.timeout(120)
def test_download_of_a_tiny_decoder_file_that_does_not_fit_fails_naming_the_key(tmp_path, hub):
    hub.repos["madebyollin/taehv"]["safetensors/taew2_1.safetensors"] = _taehv_file_bytes(
        tmp_path, **{"decoder.22.bias": torch.zeros(4, dtype=torch.float16)})
    r = cli("models", "download", str(tmp_path / "m"), "--only", "taehv", env={"HF_ENDPOINT": hub.url,
                                                                                 "HF_HUB_OFFLINE": "0"})
    assert r.returncode == 1
    assert "wrong shape: decoder.22.bias: file [4] but the module needs [3]" in r.stderr
    r = cli("models", "download", str(tmp_path / "m2"), "--only", "taehv", "--no-verify",
            env={"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0"})
    assert r.returncode == 0, r.stderr
