"""Command-line verbs: `models download`, `models verify`, `verify-parity`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flashtalk_live.settings import ConfigError
from flashtalk_live.config import load_settings


def register(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser("models", help="download and verify the released weights")
    msub = models.add_subparsers(dest="models_command", metavar="ACTION")
    models.set_defaults(func=lambda args: (models.print_help(), 2)[1])

    dl = msub.add_parser("download", help="fetch SoulX-FlashTalk-14B and chinese-wav2vec2-base (resumable)",
                         description="Fetch both repositories into DIR/SoulX-FlashTalk-14B and "
                         "DIR/chinese-wav2vec2-base with huggingface_hub. Honours HF_ENDPOINT, HF_TOKEN, "
                         "HF_HUB_OFFLINE. Run again to resume an interrupted download.")
    dl.add_argument("dir", type=Path, help="download folder (about 53 GB)")
    dl.add_argument("--only", choices=("flashtalk", "wav2vec", "taehv", "lighttaehv"),
                    help="fetch one repository; taehv (taew2_1, madebyollin/taehv) or lighttaehv (lighttaew2_1, "
                    "lightx2v/Autoencoders): the optional tiny decoder's file into DIR/taehv/, fetched only so")
    dl.add_argument("--revision", help="a branch, tag or commit (with --only)")
    dl.add_argument("--endpoint", help="hub URL (default: $HF_ENDPOINT or huggingface.co)")
    dl.add_argument("--all-files", action="store_true", help="also fetch files the engine never reads "
                    "(the fairseq copy of wav2vec2)")
    dl.add_argument("--max-workers", type=int, default=8, help="parallel file downloads (default 8)")
    dl.add_argument("--no-verify", action="store_true", help="skip `models verify` after the download")
    dl.set_defaults(func=_cmd_download)

    ver = msub.add_parser("verify", help="check a weights folder against the modules (headers only, no GPU)",
                          description="Build every module on the meta device and compare its keys and shapes "
                          "with each file's header; report every missing, unexpected or mis-shaped key.")
    ver.add_argument("dir", type=Path, nargs="?", help="the SoulX-FlashTalk-14B folder, or the folder holding "
                     "it and chinese-wav2vec2-base (default: model.weights_dir of the config)")
    ver.add_argument("--wav2vec", type=Path, help="chinese-wav2vec2-base folder (default: beside DIR, or "
                     "model.wav2vec_dir of the config)")
    ver.add_argument("--config", "-c", help="TOML config to take the folders from when DIR is not given")
    ver.set_defaults(func=_cmd_verify)

    par = sub.add_parser("verify-parity", help="run the golden parity checks found in a fixture folder",
                         description="Run every check found in DIR (laid out like the parity fixtures: dit/, "
                         "vae/, clip_visual/, t5/, audio/, colour/, ...) in float32 and print max abs and "
                         "relative L2 errors against the tolerances. Exits 1 on any failure.")
    par.add_argument("dir", type=Path, help="parity fixture folder")
    par.add_argument("--only", action="append", metavar="CHECK", help="run only this check (repeatable)")
    par.add_argument("--device", default="cpu", help="torch device (default cpu; tolerances are for float32)")
    par.add_argument("--threads", type=int, help="torch CPU threads")
    par.add_argument("--json", type=Path, metavar="PATH", help="also write the rows as JSON")
    par.set_defaults(func=_cmd_verify_parity)


def _err(msg: str) -> int:
    print(f"flashtalk-live: {msg}", file=sys.stderr)
    return 1


def _cmd_download(args: argparse.Namespace) -> int:
    # checkpoints/ imports torch: loaded by the verb that runs, not by every `flashtalk-live` verb
    from .download import DownloadError, download_release

    if args.max_workers < 1:
        return _err("--max-workers must be >= 1")
    try:
        paths = download_release(args.dir, only=args.only, revision=args.revision, endpoint=args.endpoint,
                                 all_files=args.all_files, max_workers=args.max_workers)
    except DownloadError as e:
        return _err(str(e))
    for repo, path in paths.items():
        print(f"{repo}: {path}")
    if args.only in ("taehv", "lighttaehv") and not args.no_verify:
        return _verify_taehv(next(iter(paths.values())))
    if args.no_verify or args.only:
        return 0
    return _verify(args.dir, None)


def _cmd_verify(args: argparse.Namespace) -> int:
    folder, wav2vec = args.dir, args.wav2vec
    if folder is None:
        try:
            settings = load_settings(args.config, [])
        except ConfigError as e:
            return _err(str(e))
        if not settings.model.weights_dir:
            return _err("no DIR given and model.weights_dir is not configured")
        folder = Path(settings.path(settings.model.weights_dir))
        if wav2vec is None and settings.model.wav2vec_dir:
            wav2vec = Path(settings.path(settings.model.wav2vec_dir))
    return _verify(folder, wav2vec)


def _verify(folder: Path, wav2vec: Path | None) -> int:
    # torch (checkpoints.release): only for this verb
    from .release import resolve_release_dirs, verify_release

    weights, w2v = resolve_release_dirs(folder, wav2vec)
    report = verify_release(weights, w2v)
    print(report.format())
    return 0 if report.ok else 1


def _verify_taehv(folder: Path) -> int:
    # torch (checkpoints.loader): only for this verb
    from .loader import CheckpointError
    from .taehv import find_taehv_file, plan_taehv

    try:
        plan = plan_taehv(find_taehv_file(folder, None))
        plan.report.raise_for(plan.file, "tiny decoder (TAEHV)")
    except CheckpointError as e:
        return _err(str(e))
    print("\n".join([f"OK   taehv {plan.file}"] + [f"     {line}" for line in plan.info]))
    return 0


def _cmd_verify_parity(args: argparse.Namespace) -> int:
    # torch and the parity checks: only for this verb
    import torch

    from .parity import registered_checks, run_parity

    if args.threads is not None:
        if args.threads < 1:
            return _err("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    if not args.dir.is_dir():
        return _err(f"parity fixture folder not found: {args.dir}")
    try:
        report = run_parity(args.dir, only=args.only, device=args.device)
    except ValueError as e:
        return _err(f"{e} (checks: {', '.join(registered_checks())})")
    print(report.format())
    if args.json:
        args.json.write_text(report.to_json())
    if not report.ran:
        return 2
    return 0 if report.ok else 1
