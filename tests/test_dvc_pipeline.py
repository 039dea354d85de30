"""The real pipeline's DVC side: the reward-curve plots and their custom Vega-Lite template (.dvc/plots/), a
`dvc exp run -S` sweep, and the remote round trip of the whole demo pipeline (push with the run-cache to a
WebDAV server on 127.0.0.1, fresh clone, pull: clean, nothing to reproduce, identical files).

The sweep and the round trip run in git clones of HEAD (the committed state, not the shared working tree),
with PYTHONPATH pointing at the clone's src/ so that the stages execute the code DVC hashes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from handeye.config import load_config
from handeye.repro import file_md5
from handeye.rl.config import RLConfig, run_name
from handeye.rl.figures import METRICS

REPO_ROOT = Path(__file__).resolve().parents[1]
TEMPLATE_DIR = REPO_ROOT / ".dvc" / "plots"  # DVC's folder for custom plot templates
BIN = Path(sys.executable).parent  # the venv's `dvc` and `handeye`, which the stage commands call
# dvc.yaml's reward-curve plot -> the dvclive metric it draws (the same metrics as report_rl's figures)
REWARD_PLOTS = {
    "rl_mean_reward": "Train/mean_reward",
    "rl_orientation_reward": "Episode_Reward/track_orientation_inv_l2",
    "rl_success_bonus": "Episode_Reward/success_bonus",
}
REWARD_TEMPLATE = "rl_reward"


def run(cwd: Path, *cmd: str, env: dict | None = None, timeout: float = 600) -> str:
    """stdout of a command that must succeed (DVC logs its progress there too; warnings go to stderr)."""
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout,
                            check=False)
    assert result.returncode == 0, f"{' '.join(cmd)} failed\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def dvc(cwd: Path, *args: str, env: dict | None = None, timeout: float = 600) -> str:
    return run(cwd, str(BIN / "dvc"), *args, env=env, timeout=timeout)


def git(cwd: Path, *args: str) -> str:
    return run(cwd, "git", "-c", "user.name=test", "-c", "user.email=test@example.org", *args)


def pipeline_yaml() -> dict:
    """The project's dvc.yaml, parsed as written (interpolations such as ${item} left as text)."""
    return yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())


def plot_definitions() -> dict[str, dict]:
    """dvc.yaml's top-level ``plots:`` list -> {plot id: properties}."""
    definitions: dict[str, dict] = {}
    for entry in pipeline_yaml().get("plots") or []:
        items = {entry: None}.items() if isinstance(entry, str) else entry.items()
        definitions.update({plot_id: props or {} for plot_id, props in items})
    return definitions


def templates_named(node) -> set[str]:
    """Every ``template:`` value anywhere in a parsed dvc.yaml (top-level plots and stage outputs alike)."""
    if isinstance(node, dict):
        found = {node["template"]} if isinstance(node.get("template"), str) else set()
        return found.union(*(templates_named(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(templates_named(v) for v in node))
    return set()


def rl_config() -> RLConfig:
    return load_config(RLConfig, "rl", REPO_ROOT / "params.yaml")


def run_of(filename: str) -> str:
    """The run of a data row, as the template's `calculate` transform derives it from the file path."""
    return filename.split("/live/")[0].split("/")[-1]


def clone_head(dest: Path) -> dict[str, str]:
    """git clone of REPO_ROOT's HEAD at ``dest``; returns the environment its stages must run with."""
    run(dest.parent, "git", "clone", "-q", str(REPO_ROOT), str(dest))
    run(dest, "git", "config", "user.name", "test")  # `dvc exp` and the test commit in the clone
    run(dest, "git", "config", "user.email", "test@example.org")
    path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    env = os.environ | {"PATH": path, "PYTHONPATH": str(dest / "src")}
    where = run(dest, str(BIN / "python"), "-c", "import handeye; print(handeye.__file__)", env=env).strip()
    assert Path(where).is_relative_to(dest), f"stages would run {where}, not the clone's code"
    return env


def tree_md5(root: Path, folders: list[str]) -> dict[str, str]:
    return {str(p.relative_to(root)): file_md5(p)
            for folder in folders for p in sorted((root / folder).rglob("*")) if p.is_file()}


# --- plot templates and definitions (always run, offline) ---------------------------------------------------

def test_every_template_in_dvc_yaml_exists_and_is_a_dvc_vega_lite_template():
    from dvc_render.vega_templates import TEMPLATES, get_template

    builtin = {t.DEFAULT_NAME for t in TEMPLATES}
    named = templates_named(pipeline_yaml())
    assert REWARD_TEMPLATE in named
    for name in sorted(named - builtin):
        path = TEMPLATE_DIR / f"{name}.json"
        assert path.is_file(), f"dvc.yaml names template {name!r} but {path} does not exist"
        spec = json.loads(path.read_text())
        assert spec["$schema"].startswith("https://vega.github.io/schema/vega-lite/"), path
        text = json.dumps(spec)
        # DVC refuses a template without the data anchor; x and y are what the plot definitions set.
        for anchor in ("<DVC_METRIC_DATA>", "<DVC_METRIC_X>", "<DVC_METRIC_Y>"):
            assert anchor in text, f"{path} lacks the anchor {anchor}"
        # DVC resolves the bare name to this file, not to a built-in template.
        assert get_template(name, str(TEMPLATE_DIR)).content == spec
    for path in TEMPLATE_DIR.glob("*.json"):
        json.loads(path.read_text())  # an unreferenced template must still parse


def test_rl_stage_declares_every_rl_setting_a_run_reads():
    """The rl stage lists its params key by key (the whole section would include the run matrix, and adding a
    run would then re-run every other). A field added to RLConfig but not to that list would go untracked:
    changing it would leave `dvc repro` reusing stale runs."""
    stage = pipeline_yaml()["stages"]["rl"]
    per_run = {"encoder", "seed"}  # the stage passes them as --encoder/--seed from its matrix
    matrix = {"encoders", "baselines", "seeds"}  # the matrix itself: report_rl reads it, a run does not
    expected = {f"rl.{f.name}" for f in dataclasses.fields(RLConfig)} - {f"rl.{n}" for n in per_run | matrix}
    assert set(stage["params"]) - {"launcher"} == expected


def test_the_stages_that_scale_out_run_under_the_launcher_param():
    """pretrain, features and rl start with ${launcher} (handeye, or torchrun ... -m handeye) and declare it, so
    that switching to torchrun reruns them; the other stages are single-process and must not depend on it."""
    stages = pipeline_yaml()["stages"]
    scaled = {"pretrain_scratch", "pretrain_continued", "features", "rl", "rl_baseline"}
    for name, stage in stages.items():
        body = stage.get("do", stage)
        cmd = " ".join(str(body["cmd"]).split())
        if name in scaled:
            assert cmd.startswith("${launcher} "), f"{name}: {cmd}"
            assert "launcher" in body["params"], f"{name} does not declare the launcher param"
        else:
            assert "${launcher}" not in cmd and "launcher" not in body.get("params", []), name


def test_reward_curve_plots_use_the_custom_template_and_list_every_rl_run():
    cfg = rl_config()
    definitions = plot_definitions()
    assert set(REWARD_PLOTS.values()) == set(METRICS), "the DVC plots and report_rl's figures differ"
    for plot_id, metric in REWARD_PLOTS.items():
        props = definitions[plot_id]
        assert props["template"] == REWARD_TEMPLATE
        assert props["x"] == "step"  # dvclive's step is the PPO iteration
        field = metric.split("/")[-1]
        expected = {f"{cfg.out_dir}/{run_name(e, s)}/live/plots/metrics/{metric}.tsv": field
                    for e in cfg.every_encoder for s in cfg.seeds}
        assert props["y"] == expected, f"{plot_id}: its runs differ from params.yaml's rl encoders x seeds"


def test_top_level_metrics_list_every_report_row():
    """One `probe` stage writes every row's metrics; DVC cannot glob, so dvc.yaml lists them in row order."""
    from handeye.report import ReportConfig

    cfg = load_config(ReportConfig, "report", REPO_ROOT / "params.yaml")
    listed = pipeline_yaml()["metrics"]
    assert listed == [f"{cfg.probe_root}/{key}/metrics.json" for key in cfg.rows()]


def test_dvc_does_not_walk_the_committed_remote():
    """Collecting the pipeline walks the workspace for dvc.yaml/.dvc files; the in-repo remote's objects were 93%
    of what it visited, a fixed cost of every `dvc` command (the no-op target of #7)."""
    obj = next((REPO_ROOT / "dvc-remote").rglob("*.dir"))  # the remote `demo` of .dvc/config
    dvc(REPO_ROOT, "check-ignore", "-q", str(obj.relative_to(REPO_ROOT)))


def test_features_stage_depends_on_every_report_rows_weights():
    """One `features` stage embeds every row; DVC cannot loop outside foreach, so dvc.yaml names each row's
    weights (interpolated from params, so a profile that swaps a row's weights is followed)."""
    from handeye.report import ReportConfig

    cfg = load_config(ReportConfig, "report", REPO_ROOT / "params.yaml")
    deps = pipeline_yaml()["stages"]["features"]["deps"]
    named = [m.group(1) for d in deps if (m := re.fullmatch(r"\$\{report\.encoders\.(\w+)\.weights\}", d))]
    assert named == list(cfg.rows())


# --- rendering with DVC (needs the RL outputs in the workspace) ---------------------------------------------

@pytest.fixture(scope="module")
def rl_runs() -> dict[str, Path]:
    cfg = rl_config()
    runs = {run_name(e, s): REPO_ROOT / cfg.out_dir / run_name(e, s) for e in cfg.encoders for s in cfg.seeds}
    missing = [name for name, path in runs.items() if not (path / "live" / "plots" / "metrics").is_dir()]
    if missing:
        pytest.skip(f"no RL outputs for {', '.join(missing)} in {cfg.out_dir}/ (a fresh clone has none): "
                    "`dvc repro` or `dvc pull` first")
    return runs


def tsv_column(path: Path) -> list[tuple[int, str]]:
    _header, *lines = path.read_text().splitlines()
    return [(int(step), value) for step, value in (line.split("\t") for line in lines)]


def test_dvc_plots_show_renders_each_rl_run_with_the_custom_template(rl_runs):
    template = json.loads((TEMPLATE_DIR / f"{REWARD_TEMPLATE}.json").read_text())
    shown = json.loads(dvc(REPO_ROOT, "plots", "show", "--json", *REWARD_PLOTS))
    assert not shown.get("errors"), shown.get("errors")
    for plot_id, metric in REWARD_PLOTS.items():
        (rendered,) = shown["data"][plot_id]
        assert rendered["type"] == "vega"
        spec = rendered["content"]
        keys = ("transform", "description")
        from_template = [spec[k] for k in keys] == [template[k] for k in keys]
        assert from_template, f"{plot_id} was not rendered with .dvc/plots/{REWARD_TEMPLATE}.json"
        field = metric.split("/")[-1]
        assert spec["encoding"]["y"]["field"] == field and spec["encoding"]["x"]["field"] == "step"
        rows = spec["data"]["values"]
        assert {run_of(r["filename"]) for r in rows} == set(rl_runs)
        for name, path in rl_runs.items():
            got = [(int(r["step"]), r[field]) for r in rows if run_of(r["filename"]) == name]
            want = tsv_column(path / "live" / "plots" / "metrics" / f"{metric}.tsv")
            assert got == want and len(want) > 1, f"{plot_id}: {name}'s rows differ from its dvclive file"


def test_dvc_plots_diff_renders_the_reward_curves(rl_runs):
    diff = json.loads(dvc(REPO_ROOT, "plots", "diff", "HEAD", "--json", "--targets", *REWARD_PLOTS))
    # HEAD may predate a plot (then DVC reports HEAD's error and draws the workspace alone).
    assert not [e for e in diff.get("errors", []) if e["rev"] == "workspace"], diff["errors"]
    for plot_id in REWARD_PLOTS:
        (rendered,) = diff["data"][plot_id]
        assert "workspace" in rendered["revisions"]
        rows = rendered["content"]["data"]["values"]
        assert {run_of(r["filename"]) for r in rows if r["rev"] == "workspace"} == set(rl_runs)


# --- experiments: a queued `dvc exp run -S` sweep ----------------------------------------------------------

def cached(cache: Path, md5: str) -> bool:
    return (cache / "files" / "md5" / md5[:2] / md5[2:]).is_file()


@pytest.mark.slow
@pytest.mark.pipeline
def test_queued_exp_run_sweep_reruns_only_the_probe(tmp_path):
    """`dvc exp run --queue -S probe.blr=5,20` + `dvc queue start`: two experiments, each running the probe
    stage alone (-s: its inputs, the cached features, come from REPO_ROOT's cache; nothing upstream is
    checked), with 20 probe epochs to keep it short."""
    clone = tmp_path / "clone"
    env = clone_head(clone)
    cache = REPO_ROOT / ".dvc" / "cache"
    lock = yaml.safe_load((clone / "dvc.lock").read_text())["stages"]
    features = lock["features"]["outs"]
    if not all(cached(cache, out["md5"]) for out in features):
        pytest.skip(f"HEAD's features output is not in {cache} (none on a fresh clone): dvc repro")
    # REPO_ROOT's cache, read as a remote (same files/md5 layout): only the feature caches are copied.
    dvc(clone, "remote", "add", "--local", "built", str(cache), env=env)
    dvc(clone, "pull", "-r", "built", "features", env=env)

    queued = dvc(clone, "exp", "run", "--queue", "-s", "probe",
                 "-S", "probe.blr=5,20", "-S", "probe.epochs=20", env=env)
    names = re.findall(r"Queued experiment '([^']+)'", queued)
    assert len(names) == 2, queued
    try:
        # The worker inherits stdout: send it nowhere, or reading the pipe would wait for the worker to end.
        subprocess.run([str(BIN / "dvc"), "queue", "start", "-j", "1"], cwd=clone, env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        deadline = time.monotonic() + 300
        while re.search(r"\b(Queued|Running)\b", status := dvc(clone, "queue", "status", env=env)):
            assert time.monotonic() < deadline, f"the queue did not finish in 300 s:\n{status}"
            time.sleep(3)
        assert status.count("Success") == 2, status
        for name in names:
            log = dvc(clone, "queue", "logs", name, env=env)
            assert re.findall(r"Running stage '([^']+)'", log) == ["probe"], log[-3000:]
    finally:
        subprocess.run([str(BIN / "dvc"), "queue", "stop", "--kill"], cwd=clone, env=env, capture_output=True,
                       timeout=60, check=False)

    (baseline,) = json.loads(dvc(clone, "exp", "show", "--json", env=env))[1:]  # [workspace, HEAD]
    results = {}
    for exp in baseline["experiments"]:
        data = exp["revs"][0]["data"]
        blr = data["params"]["params.yaml"]["data"]["probe"]["blr"]
        results[blr] = data["metrics"]["out/probe/random/metrics.json"]["data"]
    assert set(results) == {5, 20}
    assert results[5]["train"]["loss"] != results[20]["train"]["loss"], "the swept lr did not reach the probe"


# --- remote storage: the whole demo pipeline through a WebDAV server --------------------------------------

@pytest.mark.slow
@pytest.mark.pipeline
def test_real_pipeline_push_clone_pull_is_clean_and_reproduces_nothing(webdav, tmp_path):
    """Full demo `dvc repro` in a clone of HEAD, `dvc push --run-cache` to WebDAV, a second clone pulls it
    all: `dvc status` clean, `dvc repro` runs no stage, every output and figure identical. Several minutes."""
    remote_url, store = webdav
    first = tmp_path / "first"
    env = clone_head(first)
    dvc(first, "pull", "-q", "data.dvc", env=env)  # from the in-repo remote dvc-remote/
    ran = dvc(first, "repro", env=env, timeout=3600)
    assert "Running stage 'report_rl'" in ran, ran[-3000:]
    dvc(first, "remote", "add", "-d", "storage", remote_url, env=env)
    git(first, "add", "-A")
    git(first, "commit", "-q", "-m", "reproduced, remote storage")  # dvc.lock, paper_figs, the remote
    dvc(first, "push", "--run-cache", env=env, timeout=1800)
    assert any((store / "store" / "runs").rglob("*")), "dvc push --run-cache stored no run-cache entry"

    second = tmp_path / "second"
    run(tmp_path, "git", "clone", "-q", str(first), str(second))
    assert not (second / "out").exists()
    dvc(second, "pull", "--run-cache", env=env, timeout=1800)
    assert json.loads(dvc(second, "status", "--json", env=env)) == {}
    again = dvc(second, "repro", env=env)
    assert "Running stage" not in again, again[-3000:]
    assert "Data and pipelines are up to date" in again, again[-3000:]
    figures = tree_md5(first, ["paper_figs"])
    assert len(figures) >= 9, figures  # table .md/.tex, probe chart, six reward curves
    assert tree_md5(second, ["paper_figs"]) == figures
    pulled, produced = tree_md5(second, ["out"]), tree_md5(first, ["out"])
    assert pulled and pulled == {path: produced.get(path) for path in pulled}, "pulled outputs differ"
