"""``handeye profile NAME``: write params.yaml for a profile (demo defaults + that profile's overrides).

A profile listed in ``BASES`` holds overrides of another profile rather than of the demo defaults: paper-smoke is
the paper profile (configs/paper.yaml) with step counts, batch sizes and devices for a CPU, so that whatever the
paper profile sets (models, recipes, image sizes) reaches the smoke run without being copied into its file."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from handeye.config import PARAMS_FILE, PROFILES_DIR, deep_merge, project_path, read_yaml, resolve_profile
from handeye.errors import HandEyeError
from handeye.repro import atomic_write_text

HEADER = "# Resolved by `handeye profile "
# profile -> the profile its overrides apply to (others apply to the demo defaults of params.yaml)
BASES = {"paper-smoke": "paper"}


def resolve(name: str, params: Path = PARAMS_FILE, profiles_dir: Path = PROFILES_DIR) -> dict:
    """The full parameters of profile ``name``: its base profile's (``BASES``), or the demo defaults, plus its
    overrides. An override of a key the base lacks is an error, as for any profile."""
    if name not in BASES:
        return resolve_profile(name, params, profiles_dir)  # validates name, file and override keys
    base = resolve(BASES[name], params, profiles_dir)
    return deep_merge(base, read_yaml(project_path(profiles_dir) / f"{name}.yaml"))


def render_profile(name: str, params: Path = PARAMS_FILE, profiles_dir: Path = PROFILES_DIR) -> str:
    # Overrides apply to the demo defaults only: merging paper into an already-resolved file would hide
    # which values came from where.
    if params.is_file() and params.read_text().startswith(HEADER):
        raise HandEyeError(f"{params} already holds a resolved profile; restore the demo defaults first "
                           f"with `git checkout {params}`")
    resolved = resolve(name, params, profiles_dir)
    if name == "demo":
        return params.read_text()
    chain = "".join(f" and {profiles_dir}/{p}.yaml" for p in profile_chain(name))
    header = f"{HEADER}{name}` from {params}{chain}; `git checkout {params}` undoes it.\n"
    return header + yaml.safe_dump(resolved, sort_keys=False)


def profile_chain(name: str) -> list[str]:
    """The profile files applied to the demo defaults, first to last: paper-smoke -> [paper, paper-smoke]."""
    return [*profile_chain(BASES[name]), name] if name in BASES else [name]


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
