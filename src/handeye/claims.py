"""The paper's claims, checked against seed bands: what `handeye verify` can say on a CPU unlike dvc.lock's.

    handeye claims measure                                # the claim values of this project's outputs
    handeye claims bands --seeds 0 1 2 3 4 --out F.json   # run the pipeline per seed, write the bands
    handeye claims machine --out paper_figs/machine.json  # the CPU of this run (DVC stage machine)

A *claim* is a number the report prints: each table cell (``table/<row>/<metric>``, in %) and each RL
curve's final value and area under the curve per encoder (``rl/<encoder>/<curve>/final|auc``), or an
*ordering* of two such numbers (``a > b``). Bits differ from one CPU kind to the next, and from a GPU, in the
last places; whether the results reproduce is whether each number lands in the band that seed variation
spans. The band is a 95% prediction interval for one more run (mean +- t * sd * sqrt(1 + 1/n) over n seeds),
not a confidence interval of the mean: verify checks a single new run against it. An ordering is a claim
only if it held on every seed of the band run; the README states those and no others.

``bands`` runs the whole pipeline once per seed in a scratch copy of the project that shares its DVC cache
(so the stages that do not read a seed, such as frame extraction, come from the run-cache), with every
training seed (pretrain, features, probe, rl) set to that seed.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import math
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from handeye.config import PARAMS_FILE, load_config, read_yaml
from handeye.errors import HandEyeError
from handeye.repro import atomic_write_json, cpu_description, git_state, stage_env
from handeye.stats import mean_sd, t_quantile

LEVEL = 0.95
# Sections whose `seed` the band run varies; the demo data and the frame sampling stay those of data.dvc.
SEEDED_SECTIONS = ("pretrain", "features", "probe", "rl")
# The least half-width of a band: a claim that no seed moves (a constant) still tolerates float noise.
MIN_HALF_WIDTH = 1e-6


# ---------------------------------------------------------------------------------------- measuring


def measure_table(params: dict, root: Path) -> dict[str, float]:
    """Every cell of the recognition table, in % as printed: ``table/<row key>/<metric>``."""
    from handeye import report

    cfg = load_config(report.ReportConfig, "report", params)
    cfg = dataclasses.replace(cfg, probe_root=str(root / cfg.probe_root))
    values = {}
    for key, (_, _, metrics) in zip(cfg.rows(), report.read_recognition(cfg), strict=True):
        values |= {f"table/{key}/{m}": 100 * v for m, v in metrics.items()}
    return values


def curve_summary(x: list[float], y: list[float]) -> tuple[float, float]:
    """(final value, area under the curve divided by its x span, i.e. the curve's mean level)."""
    if not y:
        return math.nan, math.nan
    if len(y) == 1:
        return y[-1], y[-1]
    area = sum((x1 - x0) * (y0 + y1) / 2 for x0, x1, y0, y1 in zip(x, x[1:], y, y[1:], strict=False))
    return y[-1], area / (x[-1] - x[0])


def measure_rl(params: dict, root: Path) -> dict[str, float]:
    """Final value and normalised area of each reward curve per encoder (mean over its seeds, per iteration,
    as the figures draw it): ``rl/<encoder>/<curve>/final`` and ``.../auc``."""
    from handeye.rl.config import RLConfig
    from handeye.rl.figures import METRICS, collect_runs

    cfg = load_config(RLConfig, "rl", params)
    data = collect_runs(root / cfg.out_dir, cfg.every_encoder, cfg.seeds)
    values = {}
    for encoder in cfg.every_encoder:
        runs = data[data["encoder"] == encoder]
        for metric, (stem, _) in METRICS.items():
            curve = runs.groupby("iteration")[metric].mean().dropna()
            final, auc = curve_summary([float(i) for i in curve.index], [float(v) for v in curve])
            values |= {f"rl/{encoder}/{stem}/final": final, f"rl/{encoder}/{stem}/auc": auc}
    return values


def measure(params: dict, root: Path) -> dict[str, float]:
    """Every claim value of the outputs under ``root``: the table's cells and the reward curves'."""
    return measure_table(params, root) | measure_rl(params, root)


# ---------------------------------------------------------------------------------------- bands


def band(values: list[float], level: float = LEVEL) -> dict[str, float]:
    """A prediction interval for one more run: mean +- t_{(1+level)/2, n-1} * sd * sqrt(1 + 1/n)."""
    n = len(values)
    if n < 2:
        raise HandEyeError(f"a band needs at least 2 seeds, got {n}")
    mean, sd = mean_sd(values)
    half = max(t_quantile((1 + level) / 2, n - 1) * sd * math.sqrt(1 + 1 / n), MIN_HALF_WIDTH * max(1.0, abs(mean)))
    return {"mean": mean, "lo": mean - half, "hi": mean + half}


def candidate_orderings(names: list[str]) -> list[tuple[str, str]]:
    """The study's comparisons: every row against random init, per table metric and per RL final value."""
    pairs = []
    for name in names:
        kind, row, *rest = name.split("/")
        if row == "random" or (kind == "rl" and rest[-1] != "final"):
            continue
        base = "/".join([kind, "random", *rest])
        if base in names:
            pairs.append((name, base))
    return pairs


def held_orderings(per_seed: list[dict[str, float]]) -> list[list[str]]:
    """[a, b] for each candidate pair with a > b on every seed (either way round)."""
    names = sorted(per_seed[0])
    held = []
    for a, b in candidate_orderings(names):
        if all(run[a] > run[b] for run in per_seed):
            held.append([a, b])
        elif all(run[b] > run[a] for run in per_seed):
            held.append([b, a])
    return held


def seedless_digest(params: dict) -> str:
    """A digest of the parameters with the band run's seeds removed: a reference applies only to them."""
    stripped = copy.deepcopy(params)
    for section in SEEDED_SECTIONS:
        (stripped.get(section) or {}).pop("seed", None)
    (stripped.get("rl") or {}).pop("seeds", None)
    return hashlib.sha256(json.dumps(stripped, sort_keys=True).encode()).hexdigest()[:16]


def make_reference(per_seed: list[dict[str, float]], seeds: list[int], params: dict, command: str) -> dict:
    names = sorted(per_seed[0])
    return {
        "command": command,
        "made_on": {"cpu": cpu_description(), "git": git_state().get("commit")},
        "params_digest": seedless_digest(params),
        "seeds": seeds,
        "level": LEVEL,
        "values": {n: [run[n] for run in per_seed] for n in names},
        "bands": {n: band([run[n] for run in per_seed]) for n in names},
        "orderings": held_orderings(per_seed),
    }


def seeded_params(params: dict, seed: int) -> dict:
    out = copy.deepcopy(params)
    for section in SEEDED_SECTIONS:
        out[section]["seed"] = seed
    out["rl"]["seeds"] = [seed]
    return out


def copy_project(project: Path, dest: Path) -> None:
    """The files git sees (tracked and untracked-not-ignored) and the demo data, with the DVC cache shared."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=project, check=True,
                            capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        if (project / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(project / rel, dest / rel)
    if (project / "data").is_dir():
        shutil.copytree(project / "data", dest / "data", symlinks=True)
    cache = project / ".dvc" / "cache"
    for key, value in (("cache.dir", str(cache.resolve())), ("core.no_scm", "true")):  # a copy without .git
        subprocess.run([sys.executable, "-m", "dvc", "config", "--local", key, value], cwd=dest, check=True,
                       capture_output=True)


def run_seed(project: Path, params: dict, seed: int) -> dict[str, float]:
    """The claim values of one full pipeline run with every training seed set to ``seed``."""
    import yaml

    env = stage_env()
    with tempfile.TemporaryDirectory(prefix=f"handeye-seed{seed}-") as tmp:
        work = Path(tmp)
        copy_project(project, work)
        seeded = seeded_params(params, seed)
        (work / PARAMS_FILE).write_text(yaml.safe_dump(seeded, sort_keys=False))
        print(f"claims: seed {seed}: dvc repro in {work}", flush=True)
        result = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=work, env=env, check=False)
        if result.returncode != 0:
            raise HandEyeError(f"seed {seed}: `dvc repro` failed (exit {result.returncode}); see above")
        return measure(seeded, work)


# ---------------------------------------------------------------------------------------- checking


@dataclass(frozen=True)
class Verdict:
    claim: str
    ok: bool
    detail: str

    def __str__(self) -> str:
        return f"  {'ok  ' if self.ok else 'FAIL'}  {self.claim}: {self.detail}"


def read_reference(path: Path) -> dict:
    if not path.is_file():
        raise HandEyeError(f"claims reference {path} not found: make it with `handeye claims bands --out {path}`")
    try:
        ref = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise HandEyeError(f"claims reference {path} is not JSON ({e}); remake it with `handeye claims bands`") from None
    if not isinstance(ref, dict) or not {"bands", "orderings"} <= ref.keys():
        raise HandEyeError(f"claims reference {path} has no bands/orderings; remake it with `handeye claims bands`")
    return ref


def check(values: dict[str, float], ref: dict) -> list[Verdict]:
    """A verdict per band and per ordering of the reference."""
    verdicts = []
    for name, b in ref["bands"].items():
        v = values.get(name)
        if v is None or math.isnan(v):
            verdicts.append(Verdict(name, False, "not measured in these outputs"))
            continue
        ok = b["lo"] <= v <= b["hi"]
        verdicts.append(Verdict(name, ok, f"{v:.4g} {'within' if ok else 'OUTSIDE'} "
                                          f"[{b['lo']:.4g}, {b['hi']:.4g}] (seed mean {b['mean']:.4g})"))
    for a, b in ref["orderings"]:
        va, vb = values.get(a, math.nan), values.get(b, math.nan)
        ok = va > vb
        verdicts.append(Verdict(f"{a} > {b}", ok, f"{va:.4g} vs {vb:.4g}"))
    return verdicts


def applies(ref: dict, params: dict) -> bool:
    return ref.get("params_digest") == seedless_digest(params)


# ---------------------------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["measure", "bands", "machine"],
                   help="print the claim values, make a bands file, or describe this CPU into --out")
    p.add_argument("--params", type=Path, default=Path(PARAMS_FILE))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="bands: pipeline seeds")
    p.add_argument("--out", type=Path, default=None,
                   help="bands: the file to write (default reference/claims-demo.json); machine: required")


def main(args: argparse.Namespace) -> int:
    if args.action == "machine":
        if args.out is None:
            raise HandEyeError("claims machine needs --out FILE")
        atomic_write_json(args.out, cpu_description())
        return 0
    args.out = args.out or Path("reference/claims-demo.json")
    params = read_yaml(args.params)
    project = args.params.resolve().parent
    if args.action == "measure":
        for name, value in measure(params, project).items():
            print(f"{name}\t{value:.6g}")
        return 0
    if len(args.seeds) < 2:
        raise HandEyeError("--seeds: a band needs at least 2 seeds")
    per_seed = [run_seed(project, params, s) for s in args.seeds]
    command = f"handeye claims bands --seeds {' '.join(map(str, args.seeds))} --out {args.out}"
    ref = make_reference(per_seed, args.seeds, params, command)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, ref)
    print(f"claims: {len(ref['bands'])} bands and {len(ref['orderings'])} orderings over seeds {args.seeds} "
          f"written to {args.out}")
    return 0
