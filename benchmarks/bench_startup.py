"""Process start-up per interpreter: the imports every stage process pays, and a no-op `dvc repro`.

    .venv/bin/python benchmarks/bench_startup.py [--venv .venv OTHER_VENV ...] [--rounds 8]

For each venv (its own python, its own packages): ``python -c "import torch, timm"`` (timm pulls in
torchvision and torch._dynamo, ~5 s of a pretraining, features or RL stage before any work) and
``python -m dvc repro`` in the project, which must be up to date (#7's target: under 2 s). The venvs run
interleaved, round by round, so that a machine that slows down slows all of them alike. Prints the mean and
range per venv, the ratio of each mean to the first venv's (the reference), and the no-op against 2 s.
setup.sh prefers Debian's python3.11 over the python3 first on PATH because of what this measures.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TASKS = {"import torch, timm": ["-c", "import torch, timm"], "no-op dvc repro": ["-m", "dvc", "repro"]}
NOOP_TARGET_S = 2.0


def timed(python: Path, args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([str(python), *args], cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--venv", nargs="+", default=[".venv"], help="venv folders; the first is the reference")
    ap.add_argument("--rounds", type=int, default=8)
    args = ap.parse_args()
    pythons = [ROOT / v / "bin" / "python" for v in args.venv]
    for p in pythons:
        if not p.exists():
            sys.exit(f"bench_startup: error: {p} not found")
    status = subprocess.run([str(pythons[0]), "-m", "dvc", "status", "-q"], cwd=ROOT, check=False)
    if status.returncode != 0:
        sys.exit("bench_startup: error: the pipeline is not up to date (`dvc status`); run `dvc repro` first")

    times = {(v, t): [] for v in args.venv for t in TASKS}
    for _ in range(args.rounds):
        for task, argv in TASKS.items():
            for venv, python in zip(args.venv, pythons, strict=True):
                times[venv, task].append(timed(python, argv))

    versions = {venv: subprocess.run([str(python), "-c", "import sys; print(sys.version.split()[0])"],
                                     capture_output=True, text=True, check=True).stdout.strip()
                for venv, python in zip(args.venv, pythons, strict=True)}
    for task in TASKS:
        ref = statistics.mean(times[args.venv[0], task])
        for venv, python in zip(args.venv, pythons, strict=True):
            t = times[venv, task]
            line = (f"{task:18s} {venv:28s} (Python {versions[venv]}, {python.resolve()}): "
                    f"mean {statistics.mean(t):.2f} s [{min(t):.2f}-{max(t):.2f}], "
                    f"ratio to {args.venv[0]} {statistics.mean(t) / ref:.2f}")
            if task == "no-op dvc repro":
                line += f", ratio to the {NOOP_TARGET_S:.0f} s target {statistics.mean(t) / NOOP_TARGET_S:.2f}"
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
