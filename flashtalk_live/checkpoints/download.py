"""Fetch the released weights with huggingface_hub: SoulX-FlashTalk-14B and chinese-wav2vec2-base into one folder,
and on request (`only="taehv"`) the optional tiny decoder's one file into its `taehv/` folder (upstream keeps it
under `safetensors/`, so it lands in `taehv/safetensors/taew2_1.safetensors`).

`snapshot_download(local_dir=...)` keeps per-file metadata under `<dir>/.cache/huggingface`, so an interrupted
download resumes and finished files are not fetched again. Progress bars are huggingface_hub's (tqdm);
`HF_ENDPOINT` (a mirror) and `HF_TOKEN` are read by huggingface_hub itself; with `HF_HUB_OFFLINE` set nothing
can be fetched and we say so before trying.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .release import FLASHTALK_DIR, FLASHTALK_REPO, WAV2VEC_DIR, WAV2VEC_REPO
from .taehv import TAEHV_DIR, TAEHV_REPO, TAEHV_REPO_PATH

__all__ = ["DownloadError", "RELEASE_REPOS", "RepoSpec", "download_release", "hub_offline"]

RELEASE_SIZE_GB = 53  # FlashTalk-14B (~52 GB) + wav2vec2 (~0.4 GB without the fairseq copy)


@dataclass(frozen=True)
class RepoSpec:
    key: str  # what --only names
    repo_id: str
    folder: str  # sub-folder of the download directory
    ignore: tuple[str, ...] = ()  # files the engine never reads
    allow: tuple[str, ...] = ()  # when set, only these files are fetched
    default: bool = True  # fetched without --only


RELEASE_REPOS = (
    RepoSpec("flashtalk", FLASHTALK_REPO, FLASHTALK_DIR),
    # The repository also ships the fairseq checkpoint (same weights, another format): skipped by default.
    RepoSpec("wav2vec", WAV2VEC_REPO, WAV2VEC_DIR, ("*fairseq*",)),
    # The optional tiny decoder (model.decoder = "taehv"), about 22 MB; the repositories hold many other models.
    RepoSpec("taehv", TAEHV_REPO, TAEHV_DIR, allow=(TAEHV_REPO_PATH,), default=False),
)


class DownloadError(RuntimeError):
    """The download cannot start or failed; the message says why and what to do."""


_TRUE = {"1", "on", "yes", "true"}


def hub_offline(environ: dict[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return any(env.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def download_release(
    dest: str | Path,
    *,
    only: str | None = None,
    revision: str | None = None,
    endpoint: str | None = None,
    all_files: bool = False,
    max_workers: int = 8,
    environ: dict[str, str] | None = None,
) -> dict[str, Path]:
    """Download (or resume) the release into `dest/<SoulX-FlashTalk-14B | chinese-wav2vec2-base>`; with
    `only="taehv"` the tiny decoder's file into `dest/taehv/safetensors/`.

    Returns repo id -> local folder. Raises DownloadError with an actionable message on offline mode,
    an unknown or gated repository, network failure or a full disk.
    """
    specs = [s for s in RELEASE_REPOS if (only is None and s.default) or only == s.key]
    if not specs:
        raise DownloadError(f"--only must be one of {', '.join(s.key for s in RELEASE_REPOS)}, got {only!r}")
    if revision is not None and len(specs) > 1:
        raise DownloadError("--revision names a commit of one repository: use it together with --only")
    dest = Path(dest).expanduser()
    if hub_offline(environ):
        raise DownloadError(
            "HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set, so nothing can be downloaded. Unset it, or copy "
            f"the folders {FLASHTALK_DIR}/ and {WAV2VEC_DIR}/ into {dest} by other means and check them with "
            f"`flashtalk-live models verify {dest}`.")
    if dest.exists() and not dest.is_dir():
        raise DownloadError(f"{dest} exists and is not a folder")
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"cannot create {dest}: {e}") from e

    # huggingface_hub is slow to import and needed only to download
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    free_gb = shutil.disk_usage(dest).free / 1e9
    if free_gb < RELEASE_SIZE_GB and only in (None, "flashtalk"):
        print(f"warning: {free_gb:.0f} GB free in {dest}; the full release needs about {RELEASE_SIZE_GB} GB "
              "(files already downloaded count towards it)", flush=True)
    url = endpoint or constants.ENDPOINT
    out: dict[str, Path] = {}
    for spec in specs:
        target = dest / spec.folder
        print(f"fetching {spec.repo_id} from {url} into {target} (resumable; run again to continue)", flush=True)
        try:
            path = snapshot_download(
                spec.repo_id,
                revision=revision,
                local_dir=str(target),
                endpoint=endpoint,
                allow_patterns=list(spec.allow) or None,
                ignore_patterns=None if all_files else (list(spec.ignore) or None),
                max_workers=max_workers,
            )
        except GatedRepoError as e:
            raise DownloadError(f"{spec.repo_id} is gated: accept its licence on the hub and set HF_TOKEN ({e})") from e
        except RepositoryNotFoundError as e:
            raise DownloadError(f"{spec.repo_id} not found at {url} (private, renamed or a wrong HF_ENDPOINT?): "
                                f"{e}") from e
        except LocalEntryNotFoundError as e:
            raise DownloadError(f"cannot reach {url} to fetch {spec.repo_id} (no network, or offline mode): "
                                f"{e}") from e
        except HfHubHTTPError as e:
            raise DownloadError(f"download of {spec.repo_id} from {url} failed: {e}; run the command again to "
                                "resume") from e
        except OSError as e:  # disk full, permissions, connection reset below the hub client
            raise DownloadError(f"download of {spec.repo_id} into {target} failed: {e}; run the command again "
                                "to resume") from e
        out[spec.repo_id] = Path(path)
    return out
