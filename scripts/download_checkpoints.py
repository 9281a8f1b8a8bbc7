"""Fetch the released ILLUME+ checkpoints from the Hugging Face Hub into `checkpoints/`.

    python scripts/download_checkpoints.py                 # 3B MLLM + DualViTok + SDXL decoder
    python scripts/download_checkpoints.py --llm 7b        # the 7B MLLM instead (or --llm all)
    python scripts/download_checkpoints.py --from-cache    # link models already in the HF cache

Layout (what the README's commands and the official configs expect):

    checkpoints/illume_plus-qwen2_5-3b/      ILLUME-MLLM/illume_plus-qwen2_5-3b (origin format)
    checkpoints/illume_plus-qwen2_5-7b/      ILLUME-MLLM/illume_plus-qwen2_5-7b
    checkpoints/dualvitok/                   ILLUME-MLLM/dualvitok (pytorch_model.bin)
    checkpoints/dualvitok-sdxl-decoder/      ILLUME-MLLM/dualvitok-sdxl-decoder (diffusers folder)

Downloads are resumable: `snapshot_download` keeps partial files and skips finished ones, so an
interrupted run continues where it stopped when started again. `--from-cache` never touches the
network: it finds each repository in the local Hugging Face cache and links it into place.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ROOT = Path(__file__).resolve().parents[1] / "checkpoints"


@dataclass(frozen=True)
class Release:
    """One released repository and the folder name it gets below the checkpoint root."""

    repo_id: str
    folder: str


MLLMS = {
    "3b": Release("ILLUME-MLLM/illume_plus-qwen2_5-3b", "illume_plus-qwen2_5-3b"),
    "7b": Release("ILLUME-MLLM/illume_plus-qwen2_5-7b", "illume_plus-qwen2_5-7b"),
}
DUALVITOK = Release("ILLUME-MLLM/dualvitok", "dualvitok")
SDXL_DECODER = Release("ILLUME-MLLM/dualvitok-sdxl-decoder", "dualvitok-sdxl-decoder")


def selected_releases(llm: str, dualvitok: bool = True, sdxl_decoder: bool = True) -> list[Release]:
    """The repositories to fetch: `llm` is '3b', '7b', 'all' or 'none'."""
    if llm not in (*MLLMS, "all", "none"):
        raise ValueError(f"llm must be one of {[*MLLMS, 'all', 'none']}, got {llm!r}")
    releases = list(MLLMS.values()) if llm == "all" else [] if llm == "none" else [MLLMS[llm]]
    if dualvitok:
        releases.append(DUALVITOK)
    if sdxl_decoder:
        releases.append(SDXL_DECODER)
    return releases


def download(release: Release, root: Path, revision: str | None = None, token: str | None = None) -> Path:
    """Download (or finish downloading) one repository into `root/<folder>`."""
    from huggingface_hub import snapshot_download

    target = root / release.folder
    snapshot_download(release.repo_id, revision=revision, local_dir=target, token=token)
    return target


def link_from_cache(
    release: Release, root: Path, cache_dir: str | None = None, revision: str | None = None
) -> Path:
    """Point `root/<folder>` at the repository's snapshot in the local Hugging Face cache (offline)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        snapshot = Path(
            snapshot_download(release.repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True)
        )
    except LocalEntryNotFoundError:
        where = cache_dir or "the default Hugging Face cache"
        raise SystemExit(
            f"{release.repo_id} (revision {revision or 'main'}) is not in {where}; download it without --from-cache"
        ) from None
    target = root / release.folder
    if target.is_symlink() and target.resolve() == snapshot.resolve():
        return target
    if target.exists() or target.is_symlink():
        raise FileExistsError(f"{target} already exists; remove it to link {release.repo_id} from the cache")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(snapshot, target_is_directory=True)
    return target


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Download the released ILLUME+ checkpoints into checkpoints/ (resumable).",
    )
    parser.add_argument(
        "--llm", choices=(*MLLMS, "all", "none"), default="3b", help="which MLLM (default 3b)"
    )
    parser.add_argument("--no-dualvitok", action="store_true", help="skip the DualViTok tokenizer")
    parser.add_argument("--no-sdxl-decoder", action="store_true", help="skip the SDXL diffusion decoder")
    parser.add_argument(
        "--dir", type=Path, default=DEFAULT_ROOT, help=f"checkpoint root (default {DEFAULT_ROOT})"
    )
    parser.add_argument("--revision", help="branch, tag or commit for every repository (default: main)")
    parser.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the saved login)")
    parser.add_argument(
        "--from-cache",
        action="store_true",
        help="do not download: link repositories already in the Hugging Face cache (offline)",
    )
    parser.add_argument(
        "--cache-dir", default=None, help="Hugging Face cache for --from-cache (default: HF_HOME's)"
    )
    parser.add_argument("--dry-run", action="store_true", help="print what would be fetched and exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    releases = selected_releases(args.llm, not args.no_dualvitok, not args.no_sdxl_decoder)
    if not releases:
        raise SystemExit("nothing selected: drop --llm none or one of the --no-* flags")
    root = args.dir.expanduser().resolve()
    for release in releases:
        target = root / release.folder
        if args.dry_run:
            print(f"{release.repo_id} -> {target}")
            continue
        print(f"{release.repo_id} -> {target}", flush=True)
        if args.from_cache:
            link_from_cache(release, root, cache_dir=args.cache_dir, revision=args.revision)
        else:
            download(release, root, revision=args.revision, token=args.token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
