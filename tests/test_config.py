from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import yaml

from handeye.config import deep_merge, known_profiles, load_config, resolve_profile
from handeye.errors import HandEyeError


@dataclass(frozen=True)
class StageConfig:
    epochs: int  # required
    lr: float = 1e-3
    init: Literal["random", "imagenet"] = "random"
    out: Path = Path("out")
    sizes: list[int] = field(default_factory=lambda: [1, 2])
    note: str | None = None


def test_load_config_reads_section_and_overrides():
    params = {"stage": {"epochs": 3, "lr": 1, "init": "imagenet", "out": "x/y", "sizes": [4]}}
    cfg = load_config(StageConfig, "stage", params, overrides={"epochs": 5, "note": None})
    assert cfg == StageConfig(epochs=5, lr=1.0, init="imagenet", out=Path("x/y"), sizes=[4])
    assert isinstance(cfg.lr, float)


@pytest.mark.parametrize(("section", "message"), [
    ({"epochs": 1, "lrr": 2}, "unknown key"),
    ({}, "missing key 'stage.epochs'"),
    ({"epochs": "ten"}, "'stage.epochs' must be int"),
    ({"epochs": True}, "'stage.epochs' must be int"),
    ({"epochs": 1, "init": "imagenet21k"}, "must be one of random, imagenet"),
    ({"epochs": 1, "sizes": 3}, "must be a list"),
])
def test_load_config_rejects_bad_sections(section, message):
    with pytest.raises(HandEyeError, match=message):
        load_config(StageConfig, "stage", {"stage": section})


def test_deep_merge_refuses_unknown_keys():
    base = {"a": {"b": 1, "c": 2}, "d": 3}
    assert deep_merge(base, {"a": {"b": 5}}) == {"a": {"b": 5, "c": 2}, "d": 3}
    assert base["a"]["b"] == 1
    with pytest.raises(HandEyeError, match=r"'a.x' does not exist"):
        deep_merge(base, {"a": {"x": 1}})


def test_profiles(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"pretrain": {"epochs": 2, "arch": "tiny"}}))
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "paper.yaml").write_text(yaml.safe_dump({"pretrain": {"epochs": 200}}))
    assert resolve_profile("demo", params, tmp_path / "configs")["pretrain"]["epochs"] == 2
    assert resolve_profile("paper", params, tmp_path / "configs")["pretrain"] == {"epochs": 200, "arch": "tiny"}
    with pytest.raises(HandEyeError, match="unknown profile 'papr'; known: demo, paper"):
        resolve_profile("papr", params, tmp_path / "configs")


def test_repository_profiles_resolve():
    """Every shipped profile only overrides keys that params.yaml has."""
    root = Path(__file__).resolve().parents[1]
    assert known_profiles(root / "configs") == ["demo", "demo-long", "paper", "paper-smoke"]
    for name in known_profiles(root / "configs"):
        assert resolve_profile(name, root / "params.yaml", root / "configs")


def test_cpu_profiles_pin_the_pretraining_precision():
    """`precision: auto` trains in bf16 on CPUs with bf16 math and in fp32 elsewhere: a CPU profile's dvc.lock
    would then hold for one kind of machine only (README, Reproducibility)."""
    root = Path(__file__).resolve().parents[1]
    for name in ("demo", "demo-long"):
        assert resolve_profile(name, root / "params.yaml", root / "configs")["pretrain"]["precision"] == "fp32"


@pytest.mark.parametrize("name", ["demo-long", "paper", "paper-smoke"])
def test_long_profiles_run_rl_for_every_table_row(name):
    """Issue #25: RL for each of the table's strategies and for the DINOv3 baseline, in the table's order."""
    from handeye.profile import resolve

    root = Path(__file__).resolve().parents[1]
    params = resolve(name, root / "params.yaml", root / "configs")
    rows = [row["encoder"] for row in params["report"]["encoders"].values()]
    assert [*params["rl"]["encoders"], *params["rl"]["baselines"]] == rows
    if name != "paper-smoke":  # one seed runs every code path there
        assert len(params["rl"]["seeds"]) >= 3
