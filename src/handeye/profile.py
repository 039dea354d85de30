"""``handeye profile NAME``: write params.yaml for a profile (demo defaults + that profile's overrides)."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from handeye.config import PARAMS_FILE, PROFILES_DIR, resolve_profile
from handeye.errors import HandEyeError
from handeye.repro import atomic_write_text

HEADER = "# Resolved by `handeye profile "


def render_profile(name: str, params: Path = PARAMS_FILE, profiles_dir: Path = PROFILES_DIR) -> str:
    # Overrides apply to the demo defaults only: merging paper into an already-resolved file would hide
    # which values came from where.
    if params.is_file() and params.read_text().startswith(HEADER):
        raise HandEyeError(f"{params} already holds a resolved profile; restore the demo defaults first "
                           f"with `git checkout {params}`")
    resolved = resolve_profile(name, params, profiles_dir)  # validates name, file and override keys
    if name == "demo":
        return params.read_text()
    header = f"{HEADER}{name}` from {params} and {profiles_dir}/{name}.yaml; `git checkout {params}` undoes it.\n"
    return header + yaml.safe_dump(resolved, sort_keys=False)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="profile name: demo, or a file configs/NAME.yaml of overrides")
    p.add_argument("--params", type=Path, default=PARAMS_FILE, help="base parameters (demo defaults)")
    p.add_argument("--out", type=Path, default=None, help="write here instead of stdout (may be params.yaml)")


def main(args: argparse.Namespace) -> int:
    text = render_profile(args.name, args.params)
    if args.out is None:
        print(text, end="")
    else:
        atomic_write_text(args.out, text)
        print(f"profile '{args.name}' written to {args.out}")
    return 0
