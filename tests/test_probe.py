"""Feature cache + MAE linear probe: the recipe's pieces, determinism, the CLI, and bad inputs."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from handeye import cli, features, probe
from handeye.data import epic
from handeye.errors import HandEyeError
from handeye.models import vit

TINY = vit.ViTArch(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
FAST = probe.ProbeConfig(epochs=60, batch_size=8, blr=300.0, warmup_epochs=3)  # tiny set: few steps, big lr


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    root = tmp_path_factory.mktemp("epic")
    epic.write_synthetic_layout(root / "epic", videos=("P01_01", "P02_01", "P03_01"), segments_per_video=12,
                                num_verbs=3, num_nouns=4)
    torch.manual_seed(0)
    vit.save_export(root / "tiny.pt", TINY, vit.build_vit(TINY).state_dict(),
                    vit.Preprocess(input_size=32, patch_size=8), {"strategy": "test"})
    return root


@pytest.fixture(scope="module")
def cache(layout):
    cfg = features.FeaturesConfig(data_dir=str(layout / "epic"), frames_per_segment=2)
    features.run_features(cfg, str(layout / "tiny.pt"), layout / "features")
    return layout / "features"


# ------------------------------------------------------------------------------------ recipe pieces


def test_probe_head_is_affine_free_batchnorm_and_two_linears():
    m = probe.LinearProbe(8, 3, 5)
    assert not m.norm.affine and m.norm.eps == 1e-6
    v, n = m(torch.randn(4, 8))
    assert v.shape == (4, 3) and n.shape == (4, 5)
    assert torch.all(m.verb.bias == 0) and m.verb.weight.std() < 0.05


def test_lars_adapts_matrices_not_biases():
    from timm.optim import Lars

    opt = probe.build_optimizer(probe.LinearProbe(8, 3, 5), probe.ProbeConfig(), lr=0.1)
    assert isinstance(opt, Lars)
    weights, biases = opt.param_groups
    assert weights["always_adapt"] and all(p.ndim == 2 for p in weights["params"])
    assert not biases["always_adapt"] and biases["weight_decay"] == 0.0


def test_lr_warmup_then_cosine():
    cfg = probe.ProbeConfig(epochs=20, warmup_epochs=5, min_lr=0.01)
    assert probe.lr_at(0, cfg, 1.0) == 0.0
    assert probe.lr_at(2.5, cfg, 1.0) == pytest.approx(0.5)
    assert probe.lr_at(5, cfg, 1.0) == pytest.approx(1.0)
    assert probe.lr_at(12.5, cfg, 1.0) == pytest.approx(0.01 + 0.99 * 0.5)
    assert probe.lr_at(20, cfg, 1.0) == pytest.approx(0.01)


def test_action_is_right_only_when_verb_and_noun_are():
    p_v = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.2, 0.8]])
    p_n = torch.tensor([[0.7, 0.3], [0.6, 0.4], [0.1, 0.9]])
    verb, noun = torch.tensor([0, 0, 0]), torch.tensor([0, 1, 1])  # both right; noun wrong; verb wrong
    acc = probe.action_accuracy(p_v, p_n, verb, noun, ks=(1, 2))
    assert acc["action_top1"] == pytest.approx(1 / 3)
    # top-2 pairs: row 1 (0,0),(0,1) hits; row 2 (1,1),(0,1) misses (0,1)? no: (0,1) is second -> hit
    assert acc["action_top2"] == pytest.approx(1.0)


def test_action_top5_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    p_v = torch.rand(50, 7, generator=g).softmax(1)
    p_n = torch.rand(50, 9, generator=g).softmax(1)
    verb, noun = torch.randint(0, 7, (50,), generator=g), torch.randint(0, 9, (50,), generator=g)
    joint = (p_v[:, :, None] * p_n[:, None, :]).flatten(1)
    top5 = joint.topk(5, dim=1).indices
    brute = ((top5 // 9 == verb[:, None]) & (top5 % 9 == noun[:, None])).any(1).float().mean().item()
    assert probe.action_accuracy(p_v, p_n, verb, noun)["action_top5"] == pytest.approx(brute)


def test_topk():
    scores = torch.tensor([[0.1, 0.5, 0.4], [0.6, 0.3, 0.1]])
    acc = probe.topk_accuracy(scores, torch.tensor([2, 0]), "verb", ks=(1, 2))
    assert acc == {"verb_top1": 0.5, "verb_top2": 1.0}


# ------------------------------------------------------------------------------------ cache + probe


def test_feature_cache_contents(cache):
    meta = json.loads((cache / "meta.json").read_text())
    assert meta["embed_dim"] == 32 and len(meta["verbs"]) == 3 and len(meta["nouns"]) == 4
    train = features.load_split_features(cache, "train")
    assert train["features"].shape == (18, 32) and train["features"].dtype == torch.float32
    assert train["verb"].shape == (18,) and len(train["narration_id"]) == 18
    assert meta["splits"]["validation"]["segments"] == 18
    assert (cache / "run_manifest.json").is_file() and (cache / "timings.json").is_file()


def test_probe_learns_and_is_deterministic(cache, tmp_path):
    a = probe.run_probe(FAST, cache, tmp_path / "a")
    b = probe.run_probe(FAST, cache, tmp_path / "b")
    assert (tmp_path / "a" / "metrics.json").read_bytes() == (tmp_path / "b" / "metrics.json").read_bytes()
    assert (tmp_path / "a" / "probe.pt").read_bytes() == (tmp_path / "b" / "probe.pt").read_bytes()
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())["val"]
    assert set(metrics) == set(probe.METRICS)
    assert a.metrics == b.metrics
    # the noun is the frame's background colour: far above chance (1/4) for any reasonable feature
    assert metrics["noun_top1"] > 0.6
    assert metrics["action_top1"] <= min(metrics["verb_top1"], metrics["noun_top1"])
    assert metrics["action_top5"] >= metrics["action_top1"]


def test_probe_curves_have_one_row_per_epoch_and_the_summary_the_last_step(cache, tmp_path):
    probe.run_probe(FAST, cache, tmp_path / "p")
    assert json.loads((tmp_path / "p" / "metrics.json").read_text())["step"] == FAST.epochs - 1
    curves = tmp_path / "p" / "plots" / "metrics"
    for name in ["train/loss", *(f"val/{m}" for m in probe.METRICS)]:
        rows = (curves / f"{name}.tsv").read_text().splitlines()
        assert rows[0].split("\t")[0] == "step"
        assert [int(r.split("\t")[0]) for r in rows[1:]] == list(range(FAST.epochs)), name


def test_one_decoding_pass_for_many_encoders_gives_each_the_bytes_of_its_own_run(layout, tmp_path):
    """run_features_many decodes once per input size; every cache equals that encoder's lone run."""
    torch.manual_seed(1)
    other = vit.ViTArch(img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2)  # another input size
    vit.save_export(layout / "small.pt", other, vit.build_vit(other).state_dict(),
                    vit.Preprocess(input_size=16, patch_size=8), {"strategy": "test"})
    cfg = features.FeaturesConfig(data_dir=str(layout / "epic"), frames_per_segment=2)
    specs = {"a": str(layout / "tiny.pt"), "b": str(layout / "small.pt"), "c": "random:vit_demo_patch8_64"}
    many = features.run_features_many(cfg, [(spec, tmp_path / "many" / k) for k, spec in specs.items()])
    assert [r.out_dir for r in many] == [tmp_path / "many" / k for k in specs]
    for key, spec in specs.items():
        features.run_features(cfg, spec, tmp_path / "one" / key)
        for name in ("train.pt", "validation.pt", "meta.json"):
            assert (tmp_path / "many" / key / name).read_bytes() == (tmp_path / "one" / key / name).read_bytes()
    timings = json.loads((tmp_path / "many" / "a" / "timings.json").read_text())
    assert 0 < timings["train_decode_s"] < timings["train_s"]


def test_a_failure_in_a_later_split_leaves_no_cache_at_all(layout, tmp_path, monkeypatch):
    """The train caches are written when validation fails: none may be left looking complete."""
    real, calls = features.embed_segments, []

    def embed_then_fail(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise HandEyeError("decoder died")
        return real(*args, **kwargs)

    monkeypatch.setattr(features, "embed_segments", embed_then_fail)
    cfg = features.FeaturesConfig(data_dir=str(layout / "epic"), frames_per_segment=1)
    spec = str(layout / "tiny.pt")
    with pytest.raises(HandEyeError, match="decoder died"):
        features.run_features_many(cfg, [(spec, tmp_path / "a"), (spec, tmp_path / "b")])
    assert len(calls) == 2 and list(tmp_path.iterdir()) == []


def test_per_frame_features(layout, tmp_path):
    cfg = features.FeaturesConfig(data_dir=str(layout / "epic"), frames_per_segment=3, aggregate="frames")
    features.run_features(cfg, str(layout / "tiny.pt"), tmp_path / "f")
    assert features.load_split_features(tmp_path / "f", "train")["features"].shape == (18, 3, 32)
    res = probe.run_probe(probe.ProbeConfig(epochs=3, batch_size=16), tmp_path / "f", tmp_path / "p")
    assert 0.0 <= res.metrics["action_top1"] <= 1.0


# ------------------------------------------------------------------------------------------------ CLI


@pytest.fixture
def workdir(layout, tmp_path, monkeypatch):
    """A working folder with a params.yaml like the repository's, pointing at the synthetic layout."""
    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    params["features"].update(data_dir=str(layout / "epic"), frames_per_segment=2, batch_size=32)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_cli_probe_checkpoint_extracts_once_then_reuses_cache(layout, workdir, capsys):
    argv = ["probe", "--checkpoint", str(layout / "tiny.pt"), "--data-dir", str(layout / "epic"),
            "--epochs", "3", "--batch-size", "16"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "extracting features" in out and "out/probe/tiny/metrics.json" in out
    meta = workdir / "out" / "features" / "tiny" / "meta.json"
    stamp = meta.stat().st_mtime_ns
    assert cli.main(argv) == 0
    assert "extracting" not in capsys.readouterr().out and meta.stat().st_mtime_ns == stamp
    assert cli.main([*argv, "--frames-per-segment", "1"]) == 0  # another K: the cache is stale
    assert "extracting" in capsys.readouterr().out


def test_cli_features_rows_writes_every_report_row(layout, workdir, capsys):
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    tiny = str(layout / "tiny.pt")
    params["report"]["encoders"] = {"b": {"encoder": tiny, "weights": tiny}, "a": {"encoder": tiny, "weights": tiny}}
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert cli.main(["features", "--rows"]) == 0
    printed = re.findall(r"^features of .*-> out/features/(\w+)$", capsys.readouterr().out, re.MULTILINE)
    assert printed == ["b", "a"]
    a, b = (workdir / "out" / "features" / k / "train.pt" for k in "ab")
    assert a.read_bytes() == b.read_bytes()
    assert cli.main(["features", "--rows", "--out", "x"]) == 2
    assert "--rows writes out/features/KEY" in capsys.readouterr().err


def test_cli_probe_rows_probes_every_report_row_in_order(layout, workdir, capsys):
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    params["report"]["encoders"] = {"b": {"encoder": "x", "weights": "x"}, "a": {"encoder": "y", "weights": "y"}}
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    cfg = features.FeaturesConfig(data_dir=str(layout / "epic"), frames_per_segment=1)
    for key in "ab":
        features.run_features(cfg, str(layout / "tiny.pt"), workdir / "out" / "features" / key)
    assert cli.main(["probe", "--rows", "--epochs", "2", "--batch-size", "16"]) == 0
    line = r"^probe (\w+): .* -> out/probe/\1/metrics.json$"
    printed = re.findall(line, capsys.readouterr().out, re.MULTILINE)
    assert printed == ["b", "a"]  # the report's row order, not sorted
    assert all((workdir / "out" / "probe" / k / "metrics.json").is_file() for k in "ab")
    shutil.rmtree(workdir / "out" / "features" / "a")
    assert cli.main(["probe", "--rows", "--epochs", "2"]) == 2
    assert "out/features/a/meta.json not found" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["probe", "--encoder", "dinov4"], "unknown encoder 'dinov4': .*not one of: random, imagenet"),
    (["probe", "--encoder", "random", "--features", "nowhere"], "nowhere/meta.json not found"),
    (["features", "--encoder", "random:vit_demo_patch8_64", "--data-dir", "absent"], "absent not found"),
])
def test_cli_bad_input_is_one_line_and_exit_2(workdir, capsys, argv, message):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("handeye: error: ")
    assert re.search(message, err), err


def test_missing_videos_above_fraction_stop_the_run(layout, tmp_path):
    import shutil

    shutil.copytree(layout / "epic", tmp_path / "epic")
    shutil.rmtree(tmp_path / "epic" / "P02")
    cfg = features.FeaturesConfig(data_dir=str(tmp_path / "epic"), frames_per_segment=1)
    with pytest.raises(HandEyeError, match=r"6 of 18 segments skipped: 6 video missing.*above the allowed"):
        features.run_features(cfg, str(layout / "tiny.pt"), tmp_path / "f")
    assert not (tmp_path / "f").exists()  # nothing half-written
    ok = features.run_features(features.FeaturesConfig(**{**cfg.__dict__, "max_missing_fraction": 0.5}),
                               str(layout / "tiny.pt"), tmp_path / "f")
    assert ok.segments == {"train": 12, "validation": 12} and ok.skipped == {"train": 6, "validation": 6}


def test_cosine_schedule_is_used_per_iteration():
    cfg = probe.ProbeConfig(epochs=2, warmup_epochs=0)
    assert probe.lr_at(1.0, cfg, 2.0) == pytest.approx(1.0)
    assert math.isclose(probe.lr_at(0.5, cfg, 2.0), 1.0 + math.cos(math.pi / 4))
