"""Stage `report`: the study's tables and figures in paper_figs/, every number read from a metrics file.

The report is a list of sections, each a function ``write(params: dict, out_dir: Path) -> list[Path]`` that
reads its own params section and metrics and writes its files. ``recognition`` (this module) writes
table_recognition.md/.tex and the probe bar chart; another stage adds its figures by adding one line to
``SECTIONS`` (name -> "module:function") and its name to ``report.sections`` in params.yaml.
"""

from __future__ import annotations

import argparse
import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from handeye.config import PARAMS_FILE, from_dict, load_config, read_yaml
from handeye.errors import HandEyeError
from handeye.repro import atomic_write_text

SECTIONS: dict[str, str] = {
    "recognition": "handeye.report:write_recognition",
    "rl": "handeye.rl.figures:write_rl_figures",  # DVC stage report_rl (`handeye report --section rl`)
}

# The study's names of its rows, by row key (the key of report.encoders, also out/probe/<key>).
DISPLAY_NAMES = {
    "random": "Random init",
    "ego_full": "Full training on Ego10K",
    "epic_continued": "Continued pretraining on EPIC-KITCHENS + full finetuning",
    "ego_frozen": "Frozen initial layers, Ego10K adapted",
    "epic_frozen": "Frozen initial layers, EPIC-KITCHENS adapted",
    "imagenet": "ImageNet pretraining only",
    "dinov3": "DINOv3 (baseline)",
}
COLUMNS = (("verb_top1", "Verb top-1"), ("noun_top1", "Noun top-1"), ("action_top1", "Action top-1"),
           ("action_top5", "Action top-5"))
CAPTION = ("Linear-probe accuracy (%) on the EPIC-KITCHENS-100 validation split: a BatchNorm + linear probe "
           "on frozen {pooling} features; an action is right only when verb and noun both are.")
POOLING = {"cls": "CLS-token", "mean": "mean-pooled patch"}
STANDIN_NOTE = ("Demo run on stand-in data and models: 'Ego10K' is the demo's rendered egocentric clips, "
                "'EPIC-KITCHENS' its rendered, labelled hand videos in the EPIC-100 layout, 'ImageNet' MAE "
                "pretraining on crops of scikit-image's sample photos, and 'DINOv3' a tiny DINOv3 with "
                "random weights. The numbers test the pipeline, not the study's findings.")


@dataclass(frozen=True)
class EncoderRow:
    encoder: str  # registry name or checkpoint path given to `handeye features` / `handeye probe`
    weights: str  # the file or folder DVC tracks as this encoder's weights (a dependency of stage features)
    label: str | None = None  # display name; None: the study's name for the row key


@dataclass(frozen=True)
class ReportConfig:
    # row key -> {encoder, weights, label}: table rows in this order; each key gets
    # out/features/KEY in stage `features` and out/probe/KEY in stage `probe`
    encoders: dict = field(default_factory=dict)
    probe_root: str = "out/probe"  # where `handeye probe --rows` writes KEY/metrics.json
    out_dir: str = "paper_figs"  # tables and figures
    sections: list[str] = field(default_factory=lambda: ["recognition"])  # keys of report.SECTIONS, in order
    standins: bool = True  # say under the table that the data and baselines are the demo's stand-ins

    def rows(self) -> dict[str, EncoderRow]:
        if not self.encoders:
            raise HandEyeError("report.encoders is empty: list the encoders to tabulate in params.yaml")
        return {k: from_dict(EncoderRow, v, f"report.encoders.{k}") for k, v in self.encoders.items()}


# ---------------------------------------------------------------------------------------- recognition


def read_recognition(cfg: ReportConfig) -> list[tuple[str, str, dict[str, float]]]:
    """-> [(row label, encoder spec, {metric: fraction})] in row order, from out/probe/KEY/metrics.json."""
    table = []
    for key, row in cfg.rows().items():
        path = Path(cfg.probe_root) / key / "metrics.json"
        if not path.is_file():
            raise HandEyeError(f"{path} not found: run `dvc repro probe` (or `handeye probe`) first")
        val = json.loads(path.read_text()).get("val", {})
        missing = [m for m, _ in COLUMNS if m not in val]
        if missing:
            raise HandEyeError(f"{path} lacks val/{', val/'.join(missing)}")
        label = row.label or DISPLAY_NAMES.get(key, key)
        table.append((label, row.encoder, {m: float(val[m]) for m, _ in COLUMNS}))
    return table


def _best(table: list[tuple[str, str, dict[str, float]]]) -> dict[str, float]:
    return {m: max(round(100 * r[2][m], 1) for r in table) for m, _ in COLUMNS}


def render_markdown(table: list[tuple[str, str, dict[str, float]]], caption: str, note: str | None) -> str:
    best = _best(table)
    lines = [f"**Table: {caption}** Best per column in bold.", "",
             "| Strategy | Encoder | " + " | ".join(h for _, h in COLUMNS) + " |",
             "|---|---|" + "---:|" * len(COLUMNS)]
    for label, encoder, m in table:
        cells = []
        for key, _ in COLUMNS:
            v = round(100 * m[key], 1)
            cells.append(f"**{v:.1f}**" if v == best[key] else f"{v:.1f}")
        lines.append(f"| {label} | `{encoder}` | " + " | ".join(cells) + " |")
    if note:
        lines += ["", f"*{note}*"]
    return "\n".join(lines) + "\n"


def render_latex(table: list[tuple[str, str, dict[str, float]]], caption: str, note: str | None) -> str:
    from handeye.plotting import tex_escape

    best = _best(table)
    lines = [r"\begin{table}[t]", r"\centering", r"\small",
             r"\begin{tabular}{l" + "r" * len(COLUMNS) + "}", r"\toprule",
             "Strategy & " + " & ".join(h for _, h in COLUMNS) + r" \\", r"\midrule"]
    for label, _, m in table:
        cells = []
        for key, _ in COLUMNS:
            v = round(100 * m[key], 1)
            cells.append(rf"\textbf{{{v:.1f}}}" if v == best[key] else f"{v:.1f}")
        lines.append(f"{tex_escape(label)} & " + " & ".join(cells) + r" \\")
    caption = tex_escape(caption) + (r" \emph{" + tex_escape(note) + "}" if note else "")
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{caption}}}", r"\label{tab:recognition}",
              r"\end{table}"]
    return "\n".join(lines) + "\n"


def plot_recognition(table: list[tuple[str, str, dict[str, float]]], path: Path) -> Path:
    """Horizontal seaborn bars of verb/noun/action top-1 per strategy."""
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    from handeye.plotting import save_figure

    data = pd.DataFrame([{"Strategy": label, "Target": target, "Top-1 accuracy (%)": 100 * m[f"{key}_top1"]}
                         for label, _, m in table for key, target in
                         (("verb", "Verb"), ("noun", "Noun"), ("action", "Action"))])
    sns.set_theme(style="whitegrid", context="paper")
    fig, ax = plt.subplots(figsize=(7.0, 0.45 * len(table) + 1.2))
    sns.barplot(data=data, y="Strategy", x="Top-1 accuracy (%)", hue="Target", ax=ax, orient="h",
                palette="colorblind", errorbar=None)
    ax.set_ylabel("")
    ax.legend(title="", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title("Linear probe on EPIC-KITCHENS-100 validation")
    return save_figure(fig, path)


def write_recognition(params: dict[str, Any], out_dir: Path) -> list[Path]:
    """The recognition section: table_recognition.md, .tex and probe_top1.png."""
    cfg = load_config(ReportConfig, "report", params)
    table = read_recognition(cfg)
    note = STANDIN_NOTE if cfg.standins else None
    pooling = (params.get("features") or {}).get("pooling", "cls")
    caption = CAPTION.format(pooling=POOLING.get(pooling, pooling))
    md, tex = out_dir / "table_recognition.md", out_dir / "table_recognition.tex"
    atomic_write_text(md, render_markdown(table, caption, note))
    atomic_write_text(tex, render_latex(table, caption, note))
    return [md, tex, plot_recognition(table, out_dir / "probe_top1.png")]


# ------------------------------------------------------------------------------------------------ stage


def section_function(name: str) -> Callable[[dict[str, Any], Path], list[Path]]:
    if name not in SECTIONS:
        raise HandEyeError(f"unknown report section '{name}'; known: {', '.join(SECTIONS)}")
    module, func = SECTIONS[name].split(":")
    return getattr(importlib.import_module(module), func)


def run_report(params: dict[str, Any], sections: list[str] | None = None) -> list[Path]:
    cfg = load_config(ReportConfig, "report", params)
    out_dir = Path(cfg.out_dir)
    written: list[Path] = []
    for name in sections or cfg.sections:
        written += section_function(name)(params, out_dir)
    return written


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", type=Path, default=PARAMS_FILE, help="parameter file")
    p.add_argument("--section", action="append", dest="sections",
                   help=f"write only this section (repeatable; {', '.join(SECTIONS)}); "
                        f"default: report.sections")


def main(args: argparse.Namespace) -> int:
    written = run_report(read_yaml(args.params), args.sections)
    print("report: " + ", ".join(str(p) for p in written))
    return 0
