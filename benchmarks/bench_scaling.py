"""Scaling efficiency of `handeye pretrain` under torchrun: N ranks against 1 rank, same data, same run.

    python benchmarks/bench_scaling.py [--data-dir out/frames/ego] [--ranks 2] [--epochs 10] [--device cpu]

Both launches train the same global batch (pretrain.batch_size) with the demo params on the same frames;
each rank gets ``threads`` torch threads, so on this 2-core machine N=2 ranks x 1 thread is compared with
1 rank x 1 thread (the per-rank work a cluster adds nodes for) and with 1 rank x N threads (the same cores
used by one process). Prints training img/s of each launch (from the stage's own timings.json) and the
efficiency = img/s(N ranks) / (N x img/s(1 rank, 1 thread)). On a GPU machine pass --device cuda: then each
rank is one GPU and the per-GPU img/s is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def launch(ranks: int, threads: int, data_dir: Path, epochs: int, device: str, work: Path) -> float:
    """Run the pretrain stage once; -> training images/s as the stage measured it."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["pretrain"] |= {"threads": threads, "device": device}
    tag = f"r{ranks}_t{threads}"
    (work / f"{tag}.yaml").write_text(yaml.safe_dump(params))
    out = work / tag
    handeye = [sys.executable, "-m", "handeye"]
    if ranks > 1:
        handeye = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
                   "-m", "handeye"]
    subprocess.run([*handeye, "pretrain", "--data-dir", str(data_dir), "--output-dir", str(out), "--epochs",
                    str(epochs), "--params", str(work / f"{tag}.yaml")], check=True, cwd=ROOT,
                   env={**os.environ, "OMP_NUM_THREADS": str(threads)}, stdout=subprocess.DEVNULL)
    return json.loads((out / "timings.json").read_text())["images_per_second"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=ROOT / "out/frames/ego")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if not (args.data_dir / "frames.csv").is_file():
        sys.exit(f"bench_scaling: {args.data_dir} has no frame shards; run `make repro` (or dvc repro) first")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        one = launch(1, 1, args.data_dir, args.epochs, args.device, work)
        wide = launch(1, args.ranks, args.data_dir, args.epochs, args.device, work) if args.device == "cpu" else None
        many = launch(args.ranks, 1, args.data_dir, args.epochs, args.device, work)
    print(f"pretrain 1 rank x 1 thread: {one:.1f} img/s (reference)")
    if wide is not None:
        print(f"pretrain 1 rank x {args.ranks} threads: {wide:.1f} img/s ({wide / one:.2f}x the reference)")
    print(f"pretrain {args.ranks} ranks x 1 thread: {many:.1f} img/s, {many / args.ranks:.1f} img/s per rank; "
          f"scaling efficiency {many / (args.ranks * one):.2f} (img/s of {args.ranks} ranks / {args.ranks} x reference)")


if __name__ == "__main__":
    main()
