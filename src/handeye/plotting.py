"""Figures with deterministic bytes: the same data gives the same PNG/SVG/PDF file (FIELD_NOTES).

Matplotlib stamps a software version into PNGs, a date into SVGs and PDFs, and random ids into SVGs; each is
switched off here. seaborn's bootstrap confidence bands need a seed (pass ``seed=`` to the plot call).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from handeye.repro import atomic_path

_METADATA = {
    ".png": {"Software": None},
    ".svg": {"Date": None},
    ".pdf": {"CreationDate": None},
}


def save_figure(fig, path: str | Path, dpi: int = 150) -> Path:
    """Save ``fig`` atomically with fixed metadata; the format comes from the suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _METADATA:
        raise ValueError(f"unsupported figure format {suffix}; use one of {', '.join(_METADATA)}")
    with (matplotlib.rc_context({"svg.hashsalt": "handeye", "svg.fonttype": "none"}),
          atomic_path(path, suffix=suffix) as tmp):
        fig.savefig(tmp, dpi=dpi, metadata=_METADATA[suffix], bbox_inches="tight")
    plt.close(fig)
    return path


def tex_escape(text: str) -> str:
    """Plain text -> LaTeX that prints it (table cells and captions)."""
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("$", r"\$"), ("{", r"\{"), ("}", r"\}")):
        text = text.replace(a, b)
    return text
