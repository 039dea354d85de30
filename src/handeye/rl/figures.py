"""Reward curves of the RL runs (seaborn): three metrics, each against PPO iteration and against wall time,
one line per encoder, a 95% bootstrap band over seeds where there are several.

``write_rl_figures(params, out_dir)`` is the report's ``rl`` section (`handeye report --section rl`). The
iteration figures have deterministic bytes; the wall-time figures read timings.json and are the only figures
exempt from bit-for-bit checks.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pandas as pd

from handeye.config import load_config
from handeye.errors import HandEyeError
from handeye.rl.config import RLConfig, run_name
from handeye.rl.table import write_rl_table

# metric (dvclive name) -> (file stem, axis label)
METRICS = {
    "Train/mean_reward": ("mean_reward", "Mean episode reward"),
    "Episode_Reward/track_orientation_inv_l2": ("orientation_reward", "Orientation tracking reward (per s)"),
    "Episode_Reward/success_bonus": ("success_bonus", "Success bonus (per s)"),
}
AXES = {"iteration": "PPO iteration", "wall_s": "Wall time (s)"}
# Logged only in iterations in which an episode (of rank 0's envs) ended. rsl-rl's Train/mean_reward is the
# mean of the last 100 episodes and repeats itself when none ended: such iterations get no point.
ENDED = "Episode/success_rate"


def read_run(run_dir: Path) -> pd.DataFrame:
    """One run -> rows (iteration, wall_s, <metric>...) from live/plots/metrics/*.tsv and timings.json."""
    if not (run_dir / "timings.json").is_file():
        raise HandEyeError(f"RL run {run_dir} not found or unfinished; run `handeye rl` for it (or `dvc repro`)")
    timings = json.loads((run_dir / "timings.json").read_text())["iterations"]
    frame = pd.DataFrame({"iteration": [t["iteration"] for t in timings], "wall_s": [t["wall_s"] for t in timings]})
    for metric in (*METRICS, ENDED):
        frame[metric] = frame["iteration"].map(read_metric(run_dir, metric))
    frame.loc[frame[ENDED].isna(), "Train/mean_reward"] = float("nan")
    return frame


def read_metric(run_dir: Path, metric: str) -> dict[int, float]:
    """iteration -> value of one dvclive metric of a run ({} if it was never logged)."""
    tsv = run_dir / "live" / "plots" / "metrics" / f"{metric}.tsv"
    if not tsv.is_file():
        return {}
    with open(tsv, newline="") as f:
        return {int(r["step"]): float(r[metric.split("/")[-1]]) for r in csv.DictReader(f, delimiter="\t")}


def collect_runs(root: Path, encoders: list[str], seeds: list[int]) -> pd.DataFrame:
    frames = []
    for encoder in encoders:
        for seed in seeds:
            frame = read_run(root / run_name(encoder, seed))
            frames.append(frame.assign(encoder=encoder, seed=seed))
    data = pd.concat(frames, ignore_index=True)
    # Seeds of one encoder share the x of the wall-time plot (their mean clock per iteration), so that the
    # band is over seeds at the same iteration rather than over unrelated clock readings.
    data["wall_s"] = data.groupby(["encoder", "iteration"])["wall_s"].transform("mean")
    return data


def plot_curve(data: pd.DataFrame, metric: str, x: str, path: Path) -> Path:
    import matplotlib.pyplot as plt
    import seaborn as sns

    from handeye.plotting import save_figure

    several = data.groupby("encoder")["seed"].nunique().max() > 1
    fig, ax = plt.subplots(figsize=(5, 3.4))
    sns.lineplot(data=data.dropna(subset=[metric]), x=x, y=metric, hue="encoder", ax=ax,
                 errorbar=("ci", 95) if several else None, seed=0, n_boot=200, marker="o", markersize=3)
    ax.set_xlabel(AXES[x])
    ax.set_ylabel(METRICS[metric][1])
    ax.grid(alpha=0.3)
    ax.legend(title="encoder", fontsize=7, title_fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def write_rl_figures(params: dict[str, Any], out_dir: Path) -> list[Path]:
    """The six reward-curve figures ``rl_<metric>_vs_{iteration,wall_time}.png`` and the table
    ``table_rl.{md,tex}`` in ``out_dir``."""
    cfg = load_config(RLConfig, "rl", params)
    data = collect_runs(Path(cfg.out_dir), cfg.every_encoder, cfg.seeds)
    written = []
    for metric, (stem, _) in METRICS.items():
        written.append(plot_curve(data, metric, "iteration", Path(out_dir) / f"rl_{stem}_vs_iteration.png"))
        written.append(plot_curve(data, metric, "wall_s", Path(out_dir) / f"rl_{stem}_vs_wall_time.png"))
    return written + write_rl_table(data, Path(out_dir))
