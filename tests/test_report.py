"""`handeye report`: rows in the study's order, numbers from the metrics files, deterministic bytes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from handeye import cli, probe, report
from handeye.errors import HandEyeError

KEYS = ["random", "ego_full", "epic_continued", "ego_frozen", "epic_frozen", "imagenet", "dinov3"]


def params(tmp_path: Path, standins: bool = True) -> dict:
    encoders = {k: {"encoder": "dinov3-standin" if k == "dinov3" else k, "weights": f"w/{k}"} for k in KEYS}
    return {"report": {"encoders": encoders, "probe_root": str(tmp_path / "probe"),
                       "out_dir": str(tmp_path / "figs"), "standins": standins}}


def write_metrics(tmp_path: Path) -> dict[str, dict[str, float]]:
    """Distinct made-up values per row, in dvclive's metrics.json layout, so that a swap would show."""
    values = {}
    for i, key in enumerate(KEYS):
        val = {m: round(0.0123 * (i + 1) + 0.001 * j, 4) for j, m in enumerate(probe.METRICS)}
        path = tmp_path / "probe" / key / "metrics.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"train": {"loss": 1.0}, "val": val, "step": 9}))
        values[key] = val
    return values


def test_table_rows_order_and_numbers(tmp_path):
    values = write_metrics(tmp_path)
    written = report.run_report(params(tmp_path))
    figs = tmp_path / "figs"
    assert written == [figs / "table_recognition.md", figs / "table_recognition.tex", figs / "probe_top1.png"]
    md = (figs / "table_recognition.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ") and "Strategy" not in line]
    assert [r.split(" | ")[0][2:] for r in rows] == [report.DISPLAY_NAMES[k] for k in KEYS]
    assert rows[0].startswith("| Random init |") and rows[-1].startswith("| DINOv3 (baseline) |")
    for row, key in zip(rows, KEYS, strict=True):
        cells = [c.strip("* ") for c in row.strip("| ").split(" | ")[2:]]
        assert cells == [f"{100 * values[key][m]:.1f}" for m, _ in report.COLUMNS]
    assert "`dinov3-standin`" in md and "stand-in" in md
    tex = (figs / "table_recognition.tex").read_text()
    assert r"\begin{tabular}" in tex and "Frozen initial layers, EPIC-KITCHENS adapted &" in tex
    assert r"\textbf{" + f"{100 * values['dinov3']['action_top1']:.1f}" + "}" in tex  # best row in bold
    assert (figs / "probe_top1.png").read_bytes()[:4] == b"\x89PNG"


def test_bytes_are_deterministic(tmp_path):
    write_metrics(tmp_path)
    report.run_report(params(tmp_path))
    first = {p.name: p.read_bytes() for p in (tmp_path / "figs").iterdir()}
    report.run_report(params(tmp_path))
    assert first == {p.name: p.read_bytes() for p in (tmp_path / "figs").iterdir()}


def test_paper_profile_has_no_standin_note(tmp_path):
    write_metrics(tmp_path)
    report.run_report(params(tmp_path, standins=False))
    assert "stand-in" not in (tmp_path / "figs" / "table_recognition.md").read_text()


def test_missing_metrics_names_the_stage(tmp_path):
    write_metrics(tmp_path)
    (tmp_path / "probe" / "ego_frozen" / "metrics.json").unlink()
    with pytest.raises(HandEyeError, match=r"ego_frozen/metrics.json not found: run `dvc repro probe` "):
        report.run_report(params(tmp_path))


def test_other_sections_plug_in(tmp_path, monkeypatch):
    """A stage adds its figures by one SECTIONS entry: called with the params and the output folder."""
    calls = []

    def write_extra(p, out_dir):
        calls.append((p["report"]["out_dir"], out_dir))
        return [out_dir / "extra.png"]

    import sys
    import types

    monkeypatch.setitem(sys.modules, "fake_section", types.SimpleNamespace(write=write_extra))
    monkeypatch.setitem(report.SECTIONS, "extra", "fake_section:write")
    p = params(tmp_path)
    assert report.run_report(p, ["extra"]) == [tmp_path / "figs" / "extra.png"]
    assert calls == [(str(tmp_path / "figs"), tmp_path / "figs")]
    with pytest.raises(HandEyeError, match=r"unknown report section 'nope'; known: recognition, .*extra"):
        report.run_report(p, ["nope"])


def test_cli_report(tmp_path, monkeypatch, capsys):
    write_metrics(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params(tmp_path)))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["report"]) == 0
    assert "table_recognition.md" in capsys.readouterr().out
    (tmp_path / "probe" / "random" / "metrics.json").write_text(json.dumps({"val": {}}))
    assert cli.main(["report"]) == 2
    assert "lacks val/verb_top1" in capsys.readouterr().err
