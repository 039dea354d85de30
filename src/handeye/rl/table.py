"""The RL table ``paper_figs/table_rl.{md,tex}``: each encoder's final reward, orientation reward and success
rate as the mean over seeds +- the half-width of a 95% confidence interval of that mean (Student t).

A run's final value of a metric is its mean over the last ``FINAL_FRACTION`` of the iterations in which it was
logged, so that one noisy iteration does not decide a row.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from handeye.plotting import tex_escape
from handeye.repro import atomic_write_text
from handeye.stats import mean_sd, t_quantile

FINAL_FRACTION = 0.1
LEVEL = 0.95
# dvclive metric -> column header
COLUMNS = {
    "Train/mean_reward": "Mean episode reward",
    "Episode_Reward/track_orientation_inv_l2": "Orientation reward (per s)",
    "Episode/success_rate": "Success rate",
}


def final_value(curve: pd.Series) -> float:
    """curve: one run's metric by iteration (NaN where not logged) -> the mean of its last logged values."""
    logged = curve.dropna()
    if logged.empty:
        return math.nan
    return float(logged.iloc[-max(1, math.ceil(FINAL_FRACTION * len(logged))):].mean())


def seed_band(values: list[float], level: float = LEVEL) -> tuple[float, float]:
    """-> (mean, half-width of the ``level`` t-interval of the mean); half-width NaN for one seed."""
    values = [v for v in values if not math.isnan(v)]
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    if n == 1:
        return values[0], math.nan
    mean, sd = mean_sd(values)
    return mean, t_quantile((1 + level) / 2, n - 1) * sd / math.sqrt(n)


def summarise(data: pd.DataFrame) -> dict[str, dict[str, tuple[float, float]]]:
    """data: collect_runs' rows (encoder, seed, iteration, metrics...) -> encoder -> metric -> (mean, half)."""
    table = {}
    for encoder, runs in data.groupby("encoder", sort=False):
        finals = {m: [final_value(run.set_index("iteration")[m]) for _, run in runs.groupby("seed")]
                  for m in COLUMNS}
        table[encoder] = {m: seed_band(v) for m, v in finals.items()}
    return table


def _cell(mean: float, half: float, tex: bool) -> str:
    if math.isnan(mean):
        return "n/a"
    if math.isnan(half):
        return f"{mean:.2f}"
    return f"{mean:.2f} $\\pm$ {half:.2f}" if tex else f"{mean:.2f} ± {half:.2f}"


def render(table: dict[str, dict[str, tuple[float, float]]], seeds: int, iterations: int, tex: bool) -> str:
    caption = (f"Frozen-encoder PPO on two-camera cube reorientation (MuJoCo): final values (mean of the last "
               f"{FINAL_FRACTION:.0%} of {iterations} iterations), mean over {seeds} seed{'s' if seeds > 1 else ''}"
               + (f" ± the {LEVEL:.0%} confidence interval of the mean." if seeds > 1 else "."))
    if not tex:
        lines = [f"**Table: {caption}**", "", "| Encoder | " + " | ".join(COLUMNS.values()) + " |",
                 "|---|" + "---:|" * len(COLUMNS)]
        lines += [f"| `{enc}` | " + " | ".join(_cell(*row[m], tex=False) for m in COLUMNS) + " |"
                  for enc, row in table.items()]
        return "\n".join(lines) + "\n"
    lines = [r"\begin{table}[t]", r"\centering", r"\small", r"\begin{tabular}{l" + "r" * len(COLUMNS) + "}",
             r"\toprule", "Encoder & " + " & ".join(COLUMNS.values()) + r" \\", r"\midrule"]
    lines += [f"{tex_escape(enc)} & " + " & ".join(_cell(*row[m], tex=True) for m in COLUMNS) + r" \\"
              for enc, row in table.items()]
    caption = tex_escape(caption).replace("±", r"$\pm$")
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{caption}}}",
              r"\label{tab:rl}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def write_rl_table(data: pd.DataFrame, out_dir: Path) -> list[Path]:
    """paper_figs/table_rl.md and .tex from collect_runs' rows."""
    table = summarise(data)
    seeds = int(data.groupby("encoder")["seed"].nunique().min())
    iterations = int(data["iteration"].max()) + 1
    written = []
    for suffix, tex in (("md", False), ("tex", True)):
        path = Path(out_dir) / f"table_rl.{suffix}"
        atomic_write_text(path, render(table, seeds, iterations, tex))
        written.append(path)
    return written
