"""configs/paper.yaml has no dead parameter, and the paper profile's stage commands resolve.

A key of the profile is live when (1) the stage code that reads its section has a typed field for it (a
dataclass field of the section's config; a report row's EncoderRow field; a pretrain strategy's key used as
``${item.KEY}`` in its dvc.yaml command) and (2) some dvc.yaml stage lists it, or a parent of it, under
``params:``, so that changing it re-runs the stage that reads it. DVC itself resolves the stages of a temp copy
whose params.yaml is ``handeye profile paper``'s output, and every resolved command must parse with the CLI.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

from handeye.config import resolve_profile

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "configs" / "paper.yaml"


def section_configs() -> dict[str, type]:
    """Section of params.yaml -> the typed config its stage loads (handeye.config.load_config)."""
    from handeye.data.frames import FramesConfig
    from handeye.features import FeaturesConfig
    from handeye.pretrain import PretrainConfig
    from handeye.probe import ProbeConfig
    from handeye.report import ReportConfig
    from handeye.rl.config import RLConfig

    return {"frames": FramesConfig, "pretrain": PretrainConfig, "features": FeaturesConfig, "probe": ProbeConfig,
            "report": ReportConfig, "rl": RLConfig}


def leaf_keys(tree: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        keys += leaf_keys(value, path) if isinstance(value, dict) and value else [path]
    return keys


# ------------------------------------------------------------------------------------------- DVC side
@pytest.fixture(scope="module")
def paper_copy(tmp_path_factory) -> Path:
    """dvc.yaml and a no-SCM .dvc in a temp folder, params.yaml written by `handeye profile paper`."""
    tmp = tmp_path_factory.mktemp("paper")
    (tmp / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    (tmp / ".dvc").mkdir()
    (tmp / ".dvc" / "config").write_text("[core]\n    no_scm = True\n")
    proc = subprocess.run([sys.executable, "-m", "handeye", "profile", "paper", "--out", str(tmp / "params.yaml")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert proc.returncode == 0, proc.stderr
    return tmp


def dvc_stages(root: Path) -> list[dict]:
    """Every stage DVC resolves (foreach/matrix expanded): its name, command and listed params keys."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return [{"name": s.name, "cmd": s.cmd,
                 "params": [k for d in s.deps if isinstance(d, ParamsDependency) for k in d.params]}
                for s in repo.index.stages]


@pytest.fixture(scope="module")
def stages(paper_copy) -> list[dict]:
    return dvc_stages(paper_copy)


def strategy_templates() -> dict[str, str]:
    """pretrain_strategies group -> the dvc.yaml command template its foreach stage runs per entry."""
    raw = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    out = {}
    for stage in raw.values():
        target = str(stage.get("foreach", ""))
        if target.startswith("${pretrain_strategies."):
            out[target.removeprefix("${pretrain_strategies.").rstrip("}")] = stage["do"]["cmd"]
    return out


# ------------------------------------------------------------------------------------------ code side
def has_field(cls: type, parts: list[str]) -> bool:
    """``parts`` is a path of fields of ``cls`` (into nested dataclasses and report rows)."""
    from handeye.report import EncoderRow, ReportConfig

    fields = {f.name: f for f in dataclasses.fields(cls)}
    head, rest = parts[0], parts[1:]
    if head not in fields:
        return False
    if not rest:
        return True
    if cls is ReportConfig and head == "encoders":  # {row: {encoder, weights, label}}
        return len(rest) == 2 and rest[1] in {f.name for f in dataclasses.fields(EncoderRow)}
    hint = typing.get_type_hints(cls)[head]  # a nested section (rl.env: EnvConfig)
    return dataclasses.is_dataclass(hint) and has_field(hint, rest)


def read_by_code(key: str, templates: dict[str, str]) -> bool:
    section, *rest = key.split(".")
    if section == "pretrain_strategies":  # group.entry.field, passed as ${item.field} to the stage command
        return len(rest) == 3 and rest[0] in templates and f"${{item.{rest[2]}}}" in templates[rest[0]]
    configs = section_configs()
    if section not in configs:  # a top-level scalar (launcher): read by dvc.yaml itself
        return not rest and f"${{{section}}}" in (ROOT / "dvc.yaml").read_text()
    return bool(rest) and has_field(configs[section], rest)


def listed_by_dvc(key: str, stages: list[dict]) -> bool:
    return any(key == p or key.startswith(p + ".") for s in stages for p in s["params"])


def dead_keys(profile: dict, stages: list[dict]) -> list[str]:
    """Keys of ``profile`` that no stage reads, each with the reason."""
    templates = strategy_templates()
    dead = []
    for key in leaf_keys(profile):
        if not read_by_code(key, templates):
            dead.append(f"{key}: no stage config field reads it")
        elif not listed_by_dvc(key, stages):
            dead.append(f"{key}: no dvc.yaml stage lists it under params")
    return dead


# ----------------------------------------------------------------------------------------------- tests
def test_every_paper_key_is_read_by_a_stage(stages):
    profile = yaml.safe_load(PROFILE.read_text())
    assert len(leaf_keys(profile)) > 40  # the walk reaches the nested keys, not only the sections
    assert dead_keys(profile, stages) == []


@pytest.mark.parametrize(("planted", "reason"), [
    ({"probe": {"not_a_knob": 1}}, "no stage config field"),
    ({"rl": {"env": {"colour": "red"}}}, "no stage config field"),
    ({"report": {"encoders": {"dinov3": {"colour": "red"}}}}, "no stage config field"),
    ({"pretrain_strategies": {"scratch": {"random": {"lr": 1.0}}}}, "no stage config field"),
    ({"rl": {"encoder": "imagenet"}}, "no dvc.yaml stage lists it"),  # a field, but the matrix sets it per run
])
def test_a_planted_dead_key_is_found(stages, planted, reason):
    profile = yaml.safe_load(PROFILE.read_text())
    for section, value in planted.items():
        profile[section] = _merge(profile.get(section, {}), value)
    dead = dead_keys(profile, stages)
    assert len(dead) == 1 and reason in dead[0], dead


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


def test_paper_profile_resolves_over_params_yaml():
    resolved = resolve_profile("paper", ROOT / "params.yaml", ROOT / "configs")
    for key in leaf_keys(yaml.safe_load(PROFILE.read_text())):
        node = resolved
        for part in key.split("."):
            node = node[part]  # every override landed on a key of params.yaml


def test_paper_stage_commands_resolve_and_parse(stages, paper_copy):
    from handeye.cli import COMMANDS, build_parser

    params = yaml.safe_load((paper_copy / "params.yaml").read_text())
    names = {s["name"] for s in stages}
    rl_runs = {f"rl@{e}-{s}" for e in params["rl"]["encoders"] for s in params["rl"]["seeds"]}
    assert rl_runs <= names and len(rl_runs) == 18  # the table's 6 strategies x 3 seeds
    assert {f"rl_baseline@dinov3-vitb16-{s}" for s in params["rl"]["seeds"]} <= names
    assert {f"pretrain_scratch@{k}" for k in params["pretrain_strategies"]["scratch"]} <= names
    for stage in stages:
        argv = shlex.split(stage["cmd"])
        assert "${" not in stage["cmd"] and argv[0] == params["launcher"] == "handeye", stage
        assert argv[1] in COMMANDS, stage
        try:
            args = build_parser(argv[1:]).parse_args(argv[1:])
        except SystemExit:
            pytest.fail(f"{stage['name']}: `{stage['cmd']}` does not parse")
        assert args.command == argv[1]


def test_missing_paper_data_stops_the_first_stage_with_where_to_get_it(paper_copy, stages):
    """issue #23: no data and no weights in place -> one line naming each missing input and where to get it."""
    first = stages[0]["cmd"]  # extract_frames@ego: the first stage of `dvc repro`
    argv = shlex.split(first)
    env = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"}  # with a token DINOv3 could come from the Hub
    proc = subprocess.run([sys.executable, "-m", *argv], cwd=paper_copy, capture_output=True, text=True, timeout=120,
                          check=False, env={**env, "PYTHONPATH": str(ROOT / "src")})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "data/ego" in lines[0] and "HF_TOKEN" in lines[0]
    params = yaml.safe_load((paper_copy / "params.yaml").read_text())
    for needed in ("data/epic", "data/generic", params["pretrain"]["imagenet_init"],
                   params["report"]["encoders"]["dinov3"]["weights"], "https://dl.fbaipublicfiles.com/mae/"):
        assert needed in lines[0], needed
    assert not (paper_copy / "out").exists()  # stopped before anything was written
