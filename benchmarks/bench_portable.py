"""Cost and effect of the portable-bits mode (HANDEYE_PORTABLE_BITS=1, handeye.PORTABLE_BITS_ENV).

    python benchmarks/bench_portable.py [--epochs 10]       # pretrain: img/s and encoder bytes, both modes
    python benchmarks/bench_portable.py --full              # + the whole demo under the mode vs dvc.lock

The pretrain part runs the demo's ego_full pretraining twice in the same run, default math and then the math
capped at AVX2, and prints both img/s (the cost) and whether the exported encoders are byte-identical (whether
the cap reaches the kernels this CPU runs). ``--full`` re-executes the whole demo pipeline in scratch copies,
default and then under the mode, and counts the output files that differ from dvc.lock: on the CPU kind that
wrote dvc.lock the default differs in none; on another kind, the portable run differing in none would make
the bits portable. ``--save-locks DIR`` keeps each run's dvc.lock, folders.json and machine.json in DIR;
``--against DIR`` (on another CPU kind) compares this machine's portable run with such a DIR's, file by file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CLAIMS = "reference/claims-demo.json"
sys.path.insert(0, str(ROOT / "src"))


def pretrain(portable: bool, data_dir: Path, epochs: int, work: Path) -> tuple[float, str]:
    """One pretraining run -> (training img/s as the stage measured it, md5 of encoder.pt)."""
    from handeye.repro import file_md5

    tag = "portable" if portable else "default"
    out = work / tag
    env = {**os.environ, "HANDEYE_PORTABLE_BITS": "1" if portable else "0"}
    subprocess.run([sys.executable, "-m", "handeye", "pretrain", "--data-dir", str(data_dir), "--output-dir",
                    str(out), "--epochs", str(epochs), "--init", "random"], check=True, cwd=ROOT, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads((out / "timings.json").read_text())["images_per_second"], file_md5(out / "encoder.pt")


def changed_stages(saved_lock: Path, lock: Path) -> list[str]:
    """Stages whose command, params, code or data differ between two locks (outputs of other stages, which
    the math mode changes, left out of the comparison)."""
    saved, now = ((yaml.safe_load(p.read_text()) or {}).get("stages") or {} for p in (saved_lock, lock))
    produced = {o["path"] for stage in (*saved.values(), *now.values()) for o in stage.get("outs", [])}

    def inputs(stage: dict | None) -> tuple | None:
        if stage is None:
            return None
        deps = sorted((d["path"], d.get("md5")) for d in stage.get("deps", [])
                      if not any(f"{d['path']}/".startswith(f"{o}/") or o.startswith(f"{d['path']}/") for o in produced))
        return stage.get("cmd"), stage.get("params"), deps

    return sorted(name for name in {*saved, *now} if inputs(saved.get(name)) != inputs(now.get(name)))


def compare_with_saved(work: Path, saved: Path) -> None:
    """Print how many of this portable run's files differ from the portable run saved in ``saved``."""
    from handeye import verify

    changed = changed_stages(saved / "dvc.portable.lock", work / "dvc.lock")
    if changed:
        print(f"portable bits: the saved run's code, data or params differ in {len(changed)} stages "
              f"({', '.join(changed)}); their outputs cannot be compared: save a new run from this commit")
    outs = verify.locked_outputs(saved / "dvc.portable.lock")
    folders = verify.read_folders(saved / "folders.portable.json")
    expected = verify.expected_files(outs, work, lambda md5: None, folders)
    report = verify.check_files(expected, outs, work)
    cpu = verify.describe_cpu(json.loads((saved / "machine.portable.json").read_text()))
    print(f"portable bits here vs {cpu} ({saved}): {len(report.mismatches)} of {len(report.checked)} files differ")
    for m in report.mismatches:
        print(f"  differs {m.path}")


def full_demo(work: Path, portable: bool, save_lock: Path | None, against: Path | None = None) -> float:
    """The whole demo re-executed in a copy of the project; prints the files that differ from dvc.lock and
    how the claims fare. -> seconds."""
    from handeye import claims, verify

    claims.copy_project(ROOT, work)
    from handeye.repro import stage_env

    env = stage_env(HANDEYE_PORTABLE_BITS="1" if portable else "0")
    outs = verify.locked_outputs(ROOT / "dvc.lock")
    expected = verify.expected_files(outs, ROOT, verify.dvc_dir_listing(ROOT))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dvc", "repro", "--no-run-cache"], cwd=work, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    report = verify.check_files(expected, outs, work)
    verdict = "no claims reference"
    if (ROOT / CLAIMS).is_file():
        params = yaml.safe_load((ROOT / "params.yaml").read_text())
        verdicts = claims.check(claims.measure(params, work), claims.read_reference(ROOT / CLAIMS))
        verdict = f"claims {sum(v.ok for v in verdicts)}/{len(verdicts)} within their bands"
    mode = "portable bits" if portable else "default math"
    print(f"full demo, {mode}: {seconds:.0f} s; {len(report.mismatches)} of {len(report.checked)} files differ "
          f"from dvc.lock; {verdict}")
    for m in report.mismatches:
        print(f"  differs {m.path}")
    tag = "portable" if portable else "default"
    if save_lock is not None:
        save_lock.mkdir(parents=True, exist_ok=True)
        shutil.copy(work / "dvc.lock", save_lock / f"dvc.{tag}.lock")
        for name in ("folders", "machine"):
            shutil.copy(work / f"paper_figs/{name}.json", save_lock / f"{name}.{tag}.json")
    if portable and against is not None:
        compare_with_saved(work, against)
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=ROOT / "out/frames/ego")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--full", action="store_true", help="also run the whole demo under the mode")
    ap.add_argument("--save-locks", type=Path, default=None,
                    help="--full: keep both runs' dvc.lock, folders.json and machine.json here")
    ap.add_argument("--against", type=Path, default=None,
                    help="--full: compare the portable run with one saved by --save-locks on another CPU kind")
    args = ap.parse_args()
    if args.against is not None and not (args.full and (args.against / "dvc.portable.lock").is_file()):
        sys.exit(f"bench_portable: --against needs --full and {args.against}/dvc.portable.lock "
                 f"(made by --full --save-locks on another CPU kind)")
    if not (args.data_dir / "frames.csv").is_file():
        sys.exit(f"bench_portable: {args.data_dir} has no frame shards; run `make repro` (or dvc repro) first")
    with tempfile.TemporaryDirectory() as tmp:
        base, base_md5 = pretrain(False, args.data_dir, args.epochs, Path(tmp))
        port, port_md5 = pretrain(True, args.data_dir, args.epochs, Path(tmp))
    print(f"pretrain, default math: {base:.1f} img/s (reference)")
    print(f"pretrain, portable bits: {port:.1f} img/s ({port / base:.2f}x the reference); encoder.pt "
          f"{'byte-identical to' if port_md5 == base_md5 else 'differs from'} the default's")
    if args.full:
        with tempfile.TemporaryDirectory() as tmp:
            base = full_demo(Path(tmp) / "default", portable=False, save_lock=args.save_locks)
            port = full_demo(Path(tmp) / "portable", portable=True, save_lock=args.save_locks,
                             against=args.against)
        print(f"full demo: portable bits take {port / base:.2f}x the default's time")


if __name__ == "__main__":
    main()
