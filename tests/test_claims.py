"""handeye.claims and verify's claims level: bands, orderings and verdicts against hand-computed values, on
fake outputs written in the formats the probe and rl stages write."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest

from handeye import claims, verify
from handeye.errors import HandEyeError
from handeye.verify import Report

PARAMS = {
    "report": {"encoders": {"random": {"encoder": "random", "weights": "w"},
                            "imagenet": {"encoder": "imagenet", "weights": "w"}}, "probe_root": "out/probe"},
    "rl": {"encoders": ["random", "imagenet"], "seeds": [0], "out_dir": "out/rl", "seed": 0},
    "pretrain": {"seed": 0}, "features": {"seed": 0}, "probe": {"seed": 0},
}
PROBE = {"random": (0.10, 0.20, 0.02, 0.08), "imagenet": (0.30, 0.25, 0.05, 0.12)}
# iteration -> mean reward; the orientation reward is twice it, no success; iteration 1 ended no episode.
REWARD = {"random": [1.0, math.nan, 2.0], "imagenet": [2.0, math.nan, 6.0]}


def write_outputs(root: Path) -> None:
    for key, (verb, noun, action, action5) in PROBE.items():
        path = root / "out/probe" / key / "metrics.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"val": {"verb_top1": verb, "noun_top1": noun, "action_top1": action,
                                            "action_top5": action5}}))
    for encoder, rewards in REWARD.items():
        run = root / "out/rl" / f"{encoder}_s0"
        metrics = run / "live/plots/metrics"
        (metrics / "Train").mkdir(parents=True)
        (metrics / "Episode_Reward").mkdir()
        (metrics / "Episode").mkdir()
        (run / "timings.json").write_text(json.dumps({"iterations": [{"iteration": i, "wall_s": i + 1.0}
                                                                    for i in range(3)]}))
        for name, scale in (("Train/mean_reward", 1), ("Episode_Reward/track_orientation_inv_l2", 2),
                            ("Episode_Reward/success_bonus", 0), ("Episode/success_rate", 0)):
            column = name.split("/")[-1]
            rows = [f"{i}\t{scale * r}" for i, r in enumerate(rewards) if not math.isnan(r)]
            (metrics / f"{name}.tsv").write_text(f"step\t{column}\n" + "\n".join(rows) + "\n")


def test_band_is_a_t_prediction_interval():
    b = claims.band([1.0, 2.0, 3.0, 4.0, 5.0])
    # mean 3, sd sqrt(2.5), t(0.975, 4) = 2.776445, sqrt(1 + 1/5): half-width 4.80884
    assert b["mean"] == pytest.approx(3.0)
    assert b["hi"] - 3.0 == pytest.approx(2.776445 * math.sqrt(2.5) * math.sqrt(1.2), rel=1e-6)
    assert b["lo"] == pytest.approx(3.0 - (b["hi"] - 3.0))
    assert claims.band([0.0, 0.0])["hi"] == pytest.approx(claims.MIN_HALF_WIDTH)  # constants keep a floor
    with pytest.raises(HandEyeError, match="at least 2 seeds"):
        claims.band([1.0])


def test_curve_summary_by_hand():
    assert claims.curve_summary([0.0, 1.0, 2.0], [0.0, 2.0, 4.0]) == (4.0, 2.0)
    assert claims.curve_summary([0.0, 2.0], [1.0, 3.0]) == (3.0, 2.0)
    assert claims.curve_summary([5.0], [7.0]) == (7.0, 7.0)
    assert all(math.isnan(v) for v in claims.curve_summary([], []))


def test_measure_reads_table_cells_and_reward_curves(tmp_path):
    write_outputs(tmp_path)
    values = claims.measure(PARAMS, tmp_path)
    assert values["table/imagenet/verb_top1"] == pytest.approx(30.0)
    assert values["table/random/action_top5"] == pytest.approx(8.0)
    # iteration 1 has no point: the curve is (0, 2), (2, 6) for imagenet, its area over 2 iterations 8
    assert values["rl/imagenet/mean_reward/final"] == 6.0
    assert values["rl/imagenet/mean_reward/auc"] == pytest.approx(4.0)
    assert values["rl/random/orientation_reward/auc"] == pytest.approx(3.0)
    assert len(values) == 2 * 4 + 2 * 3 * 2


def test_orderings_are_those_that_held_on_every_seed():
    seeds = [{"table/imagenet/verb_top1": 30, "table/random/verb_top1": 10,
              "table/imagenet/noun_top1": 20, "table/random/noun_top1": 21},
             {"table/imagenet/verb_top1": 31, "table/random/verb_top1": 12,
              "table/imagenet/noun_top1": 22, "table/random/noun_top1": 21}]
    assert claims.held_orderings(seeds) == [["table/imagenet/verb_top1", "table/random/verb_top1"]]
    seeds[1]["table/imagenet/noun_top1"] = 19  # now random is above on both seeds
    assert ["table/random/noun_top1", "table/imagenet/noun_top1"] in claims.held_orderings(seeds)


def test_reference_applies_to_the_same_params_whatever_the_seeds():
    ref = claims.make_reference([{"table/random/verb_top1": 1.0}, {"table/random/verb_top1": 2.0}], [0, 1], PARAMS, "cmd")
    assert claims.applies(ref, claims.seeded_params(PARAMS, 3))
    other = json.loads(json.dumps(PARAMS))
    other["rl"]["out_dir"] = "elsewhere"
    assert not claims.applies(ref, other)
    seeded = claims.seeded_params(PARAMS, 3)
    assert [seeded[s]["seed"] for s in claims.SEEDED_SECTIONS] == [3] * 4 and seeded["rl"]["seeds"] == [3]


def test_a_tampered_metric_fails_its_claim_by_name(tmp_path):
    write_outputs(tmp_path)
    runs = [claims.measure(PARAMS, tmp_path)]
    runs.append({k: v * 1.01 for k, v in runs[0].items()})  # a second "seed", 1% off
    ref = claims.make_reference(runs, [0, 1], PARAMS, "cmd")
    assert all(v.ok for v in claims.check(runs[0], ref))

    tampered = dict(runs[0]) | {"table/imagenet/verb_top1": 60.0}
    failed = [v for v in claims.check(tampered, ref) if not v.ok]
    assert [v.claim for v in failed] == ["table/imagenet/verb_top1"]
    assert "OUTSIDE" in str(failed[0]) and "table/imagenet/verb_top1" in str(failed[0])

    reversed_ = dict(runs[0]) | {"table/imagenet/noun_top1": 19.0}  # inside no band, and below random
    names = {v.claim for v in claims.check(reversed_, ref) if not v.ok}
    assert "table/imagenet/noun_top1 > table/random/noun_top1" in names


def test_summary_passes_other_cpu_within_bands_and_fails_a_like_cpu():
    report = Report(checked=["a", "b"], mismatches=[verify.Mismatch("a", "1", "2")])
    ok_claims = [claims.Verdict("x", True, "")] * 3
    amd = {"model": "AMD EPYC 7B13", "flags": ["avx2"]}
    xeon = {"model": "Intel Xeon", "flags": ["avx2", "avx512f", "avx512_bf16", "amx_tile"]}
    line, ok = verify.summary(report, ok_claims, amd, xeon)
    assert ok and line == ("bits differ (1 of 2 files): other CPU (AMD EPYC 7B13 (avx2)) than dvc.lock "
                           "(Intel Xeon (avx2, avx512f, avx512_bf16, amx_tile)); claims: 3/3 within their bands")
    assert not verify.summary(report, ok_claims, xeon, xeon)[1]
    assert not verify.summary(report, [*ok_claims, claims.Verdict("y", False, "")], amd, xeon)[1]
    line, ok = verify.summary(Report(checked=["a", "b"]), ok_claims, xeon, xeon)
    assert ok and line == "2/2 files identical; claims: 3/3 within their bands"


def test_missing_or_broken_reference_is_one_line(tmp_path):
    with pytest.raises(HandEyeError, match=r"claims reference .*missing.json not found: make it with"):
        claims.read_reference(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(HandEyeError, match="has no bands/orderings"):
        claims.read_reference(tmp_path / "bad.json")
    (tmp_path / ".dvc").mkdir()
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    args = argparse.Namespace(lock=tmp_path / "dvc.lock", repro=False, outputs=None, claims=Path("missing.json"),
                              lock_cpu=None, lock_folders=None, write_folders=None)
    with pytest.raises(HandEyeError, match="not found"):
        verify.main(args)


def test_the_committed_reference_matches_the_demo_params():
    root = Path(__file__).resolve().parents[1]
    ref = claims.read_reference(root / "reference" / "claims-demo.json")
    from handeye.config import read_yaml

    assert claims.applies(ref, read_yaml(root / "params.yaml")), "params.yaml changed: rerun " + ref["command"]
    assert len(ref["seeds"]) >= 5
