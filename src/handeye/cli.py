"""HandEye: pretrained vision encoders for dexterous manipulation, one subcommand per pipeline stage.

Each stage module exposes ``add_arguments(parser)`` and ``main(args) -> int``. Modules are imported only
when their subcommand runs, so ``handeye --help`` answers without loading torch.
A ``HandEyeError`` (bad input, missing file) becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from handeye.errors import HandEyeError

# name -> (module, one-line help). Add a stage here and give its module add_arguments/main.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo-data": ("handeye.data.demo_data", "generate the embedded demo dataset (ego/, epic/, generic/)"),
    "smoke-data": ("handeye.data.smoke_data", "write tiny data in the paper's real formats (paper-smoke profile)"),
    "profile": ("handeye.profile", "write the resolved parameters of a profile (demo, paper, paper-smoke)"),
    "extract-frames": ("handeye.data.frames", "decode, deduplicate and shard the frames of a video corpus"),
    "pretrain": ("handeye.pretrain", "MAE pretraining of one strategy (random/imagenet/PATH init, frozen blocks)"),
    "features": ("handeye.features", "embed the frames of every EPIC segment once per encoder (feature cache)"),
    "probe": ("handeye.probe", "linear probe (verb/noun/action) on cached EPIC features of one encoder"),
    "report": ("handeye.report", "write paper_figs/: recognition table (.md/.tex), probe chart, other sections"),
    "rl": ("handeye.rl.train", "PPO (rsl-rl) on two-camera cube reorientation through a frozen encoder"),
    "verify": ("handeye.verify", "re-run the pipeline; check its bits against dvc.lock and its claims against seed bands"),
    "claims": ("handeye.claims", "the paper's claims: measure them, make their seed bands, describe this CPU"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="handeye", description=__doc__.splitlines()[0])
    from handeye import __version__

    parser.add_argument("--version", action="version", version=f"handeye {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = next((a for a in argv if a in COMMANDS), None)
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name == chosen:  # import only the module that will run
            mod = importlib.import_module(module)
            mod.add_arguments(p)
            p.set_defaults(_main=mod.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser(argv).parse_args(argv)
        return int(args._main(args) or 0)
    except HandEyeError as e:
        if not getattr(e, "quiet", False):  # raised on every rank of a launch: rank 0 alone prints it
            print(f"handeye: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("handeye: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
