"""The paper-smoke profile (configs/paper-smoke.yaml, issue #23): the paper profile's models, recipes, image sizes
and stage graph, run end to end on the CPU on `handeye smoke-data`'s tiny data in the real formats.

The fast tests compare the profile with configs/paper.yaml: only step counts, batch sizes and devices may differ,
and DVC must resolve the same stages. The slow one copies the working tree (the files git sees) into a temp
folder, writes the smoke data and params.yaml there, runs one plain `dvc repro` and checks what the stages wrote:
every stage ran, the table and the six RL figures exist, every MAE encoder and the DINOv3 row are ViT-B/16 and
the RL actor and critic have the paper's widths. It prints the wall time and the memory peak (the largest stage
process exactly, and each stage's peak as sampled every 0.2 s).
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

from handeye.data import smoke_data
from handeye.profile import render_profile, resolve

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's `dvc` and `handeye`, which the stage commands call
# What paper-smoke may change in the resolved paper profile, and nothing else: step counts, batch sizes, workers
# and devices (configs/paper-smoke.yaml says why for each). Models, recipes and image sizes stay the paper's.
SMOKE_OVERRIDES = {
    "pretrain.batch_size", "pretrain.num_workers",
    "pretrain_strategies.scratch.ego_full.epochs", "pretrain_strategies.continued.epic_continued.epochs",
    "pretrain_strategies.continued.ego_frozen.epochs", "pretrain_strategies.continued.epic_frozen.epochs",
    "features.device", "probe.epochs",
    "rl.backend", "rl.iterations", "rl.num_steps_per_env", "rl.save_interval", "rl.env.num_envs",
    "rl.env.encoder_bf16", "rl.seeds",  # one seed: the runs of other seeds are the same stages
}
PAPER_WIDTHS = [1024, 512, 512, 256, 128]
FIGURES = ("table_recognition.md", "table_recognition.tex", "table_rl.md", "table_rl.tex", "probe_top1.png",
           *(f"rl_{m}_vs_{x}.png" for m in ("mean_reward", "orientation_reward", "success_bonus")
             for x in ("iteration", "wall_time")))


def leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in tree.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        out.update(leaves(value, path) if isinstance(value, dict) and value else {path: value})
    return out


def resolved(name: str) -> dict:
    return resolve(name, ROOT / "params.yaml", ROOT / "configs")


# ------------------------------------------------------------------------------------ the profile itself
def test_smoke_differs_from_paper_only_in_steps_batches_and_devices():
    paper, smoke = leaves(resolved("paper")), leaves(resolved("paper-smoke"))
    assert paper.keys() == smoke.keys()
    assert {k for k in paper if paper[k] != smoke[k]} == SMOKE_OVERRIDES
    for key in ("pretrain.arch", "pretrain.decoder_embed_dim", "pretrain.decoder_depth", "pretrain.norm_pix_loss",
                "pretrain.imagenet_init", "frames.resolution", "frames.dedup_encoder", "probe.blr",
                "probe.batch_size", "rl.env.image_size", "rl.actor_hidden_dims", "rl.critic_hidden_dims"):
        assert smoke[key] == paper[key] != leaves(resolved("demo"))[key], key  # the paper's, not the demo's
    assert smoke["rl.actor_hidden_dims"] == smoke["rl.critic_hidden_dims"] == PAPER_WIDTHS


def test_smoke_overrides_apply_over_the_paper_profile():
    text = render_profile("paper-smoke", ROOT / "params.yaml", ROOT / "configs")
    header = text.splitlines()[0]
    assert "configs/paper.yaml" in header and "configs/paper-smoke.yaml" in header
    assert yaml.safe_load(text) == resolved("paper-smoke")
    assert render_profile("paper", ROOT / "params.yaml", ROOT / "configs").startswith(
        "# Resolved by `handeye profile paper` from ")


def test_smoke_data_lands_where_the_paper_profile_reads():
    smoke = resolved("paper-smoke")
    assert smoke["pretrain"]["imagenet_init"] == f"data/weights/{smoke_data.MAE_FILE}"
    assert smoke["report"]["encoders"]["dinov3"]["weights"] == f"data/weights/{smoke_data.DINOV3_DIR}"
    assert smoke["frames"]["dedup_encoder"] == smoke["report"]["encoders"]["dinov3"]["encoder"] == smoke_data.DINOV3_DIR
    assert smoke["pretrain"]["arch"] == smoke_data.MAE_ARCH
    p = smoke["pretrain"]
    assert (p["decoder_embed_dim"], p["decoder_depth"], p["decoder_num_heads"]) == smoke_data.MAE_DECODER
    assert smoke["features"]["data_dir"] == "data/epic"
    assert smoke["frames"]["resolution"] == smoke_data.DINOV3_VITB16["image_size"]


def dvc_graph(params: dict, where: Path) -> dict[str, list[str]]:
    """Stage name -> its dependency paths, as DVC resolves dvc.yaml under ``params``."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    where.mkdir()
    (where / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    (where / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (where / ".dvc").mkdir()
    (where / ".dvc" / "config").write_text("[core]\n    no_scm = True\n")
    with Repo(str(where)) as repo:
        return {s.name: sorted(d.def_path for d in s.deps if not isinstance(d, ParamsDependency))
                for s in repo.index.stages}


def test_smoke_has_the_paper_stage_graph(tmp_path):
    paper = dvc_graph(resolved("paper"), tmp_path / "paper")
    assert {name.split("@")[0] for name in paper} == set(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])
    smoke = resolved("paper-smoke")
    assert smoke["rl"]["seeds"] and set(smoke["rl"]["seeds"]) < set(resolved("paper")["rl"]["seeds"])
    smoke["rl"]["seeds"] = resolved("paper")["rl"]["seeds"]  # its only change to the graph: fewer rl instances
    assert dvc_graph(smoke, tmp_path / "smoke") == paper


def test_smoke_data_never_replaces_other_data(tmp_path):
    from handeye.errors import HandEyeError

    (tmp_path / "run_manifest.json").write_text(json.dumps({"stage": "demo_data"}))  # `make data`'s demo data
    with pytest.raises(HandEyeError, match=r"is not a smoke-data output"):
        smoke_data.check_out(tmp_path)
    (tmp_path / "run_manifest.json").write_text(json.dumps({"stage": "smoke_data"}))
    smoke_data.check_out(tmp_path)
    smoke_data.check_out(tmp_path / "absent")


# ------------------------------------------------------------------------------------ the smoke run
class StageSampler:
    """Samples the resident memory of every `handeye` process under ``pid`` (and of its children) and when it
    was seen, keyed by its command: each stage's peak and wall time, without touching the stages."""

    def __init__(self, pid: int, every_s: float = 0.2):
        import psutil

        self.root, self.every_s = psutil.Process(pid), every_s
        self.peak: dict[str, int] = {}
        self.seen: dict[str, list[float]] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    @staticmethod
    def key(cmdline: list[str]) -> str | None:
        """`.../handeye pretrain --data-dir X --output-dir out/models/ego_full ...` -> 'pretrain ego_full'."""
        at = next((i for i, a in enumerate(cmdline) if Path(a).name == "handeye"), None)
        if at is None or at + 1 >= len(cmdline):
            return None
        args = cmdline[at + 1:]
        named = {a: b for a, b in itertools.pairwise(args) if a.startswith("--")}
        detail = [Path(named[k]).name for k in ("--output-dir", "--encoder", "--seed", "--section") if k in named]
        positional = [a for a in args[1:2] if not a.startswith("--")]
        return " ".join([args[0], *positional, *detail])

    def run(self) -> None:
        import psutil

        while not self.stop.wait(self.every_s):
            try:
                procs = self.root.children(recursive=True)
            except psutil.Error:
                continue
            for proc in procs:
                try:
                    key = self.key(proc.cmdline())
                    if key is None:
                        continue
                    # The largest process of the stage, not a sum: a child forked to run git shares its
                    # parent's pages until it execs, and would be counted twice.
                    rss = max([proc.memory_info().rss, *(c.memory_info().rss for c in proc.children(recursive=True))])
                except psutil.Error:
                    continue
                self.peak[key] = max(self.peak.get(key, 0), rss)
                now = time.perf_counter()
                self.seen.setdefault(key, [now, now])[1] = now

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


# `dvc repro` in a process of its own: getrusage(RUSAGE_CHILDREN) then holds the largest process of its tree alone
REPRO = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
         "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=open('.maxrss_kib', 'w')); "
         "sys.exit(rc)")


def copy_tree(dest: Path) -> None:
    """The files git sees (tracked and untracked-not-ignored), without the demo's data, lock and report."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                            capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        if (ROOT / rel).is_file() and not rel.startswith(("paper_figs/", "dvc-remote/")) and rel not in (
                "data.dvc", "dvc.lock"):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)


def run(cwd: Path, env: dict, *cmd: str, timeout: float = 600) -> None:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"


@pytest.fixture(scope="module")
def smoke_run():
    """A temp copy of the project after `handeye smoke-data`, `handeye profile paper-smoke` and `dvc repro`:
    (root, seconds of dvc repro, its largest process's max RSS in bytes, the sampler). The copy (~8 GiB: six
    ViT-B/16 checkpoints with their AdamW state) is deleted afterwards."""
    with tempfile.TemporaryDirectory(prefix="handeye-paper-smoke-") as tmp:
        root = Path(tmp)
        copy_tree(root)
        env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
               "PYTHONPATH": str(root / "src")}
        run(root, env, str(BIN / "handeye"), "smoke-data", "--out", "data")
        run(root, env, str(BIN / "handeye"), "profile", "paper-smoke", "--out", "params.yaml")
        # A copy without .git; the cache hard-links outputs instead of copying them (half the disk and bytes)
        for key, value in (("core.no_scm", "true"), ("cache.type", "hardlink")):
            run(root, env, str(BIN / "dvc"), "config", "--local", key, value)
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", REPRO, str(BIN / "dvc"), "repro"], cwd=root, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        sampler = StageSampler(proc.pid)
        try:
            log, _ = proc.communicate(timeout=1800)
        finally:
            sampler.close()
            proc.kill()
        seconds = time.perf_counter() - start
        assert proc.returncode == 0, f"dvc repro failed\n{log[-6000:]}"
        max_rss = int((root / ".maxrss_kib").read_text()) * 1024
        yield root, seconds, max_rss, sampler


@pytest.mark.slow
def test_smoke_run_time_and_memory(smoke_run, capsys):
    _, seconds, max_rss, sampler = smoke_run
    assert {"features", "probe", "pretrain ego_full", "pretrain epic_frozen", "rl random 0"} <= sampler.peak.keys()
    # A sample never exceeds its process's high-water mark, but for the kernel's RSS counters, which lag by a
    # few hundred KiB (per-CPU batches of pages)
    assert max_rss >= 0.99 * max(sampler.peak.values())
    with capsys.disabled():
        print(f"\npaper-smoke: dvc repro of {len(sampler.peak)} stages in {seconds:.0f} s; memory peak "
              f"{max_rss / 2**30:.2f} GiB (largest process)")
        for key, rss in sorted(sampler.peak.items(), key=lambda kv: -kv[1]):
            first, last = sampler.seen[key]
            print(f"  {key:<34} peak {rss / 2**30:5.2f} GiB, seen {last - first:5.1f} s")


@pytest.mark.slow
def test_every_stage_ran_and_the_report_is_written(smoke_run, tmp_path):
    root = smoke_run[0]
    params = yaml.safe_load((root / "params.yaml").read_text())
    locked = set(yaml.safe_load((root / "dvc.lock").read_text())["stages"])
    assert locked == set(dvc_graph(params, tmp_path / "graph"))
    for name in FIGURES:
        assert (root / "paper_figs" / name).stat().st_size > 0, name  # paper_figs/ was not copied: all new
    table = (root / "paper_figs" / "table_recognition.md").read_text()
    for row in params["report"]["encoders"].values():
        assert f"`{row['encoder']}`" in table
    for corpus in ("ego", "epic"):  # the paper's frame format, deduplicated by DINOv3 ViT-B/16
        frames = root / "out" / "frames" / corpus
        assert list((frames / "shards").glob("*.tar")) and not list((frames / "shards").glob("*.npy"))
        manifest = json.loads((frames / "run_manifest.json").read_text())["config"]
        assert manifest["dedup_encoder"] == "dinov3-vitb16" and manifest["resolution"] == 224


@pytest.mark.slow
def test_every_encoder_is_vit_b16(smoke_run):
    from handeye.models import vit

    root = smoke_run[0]
    params = yaml.safe_load((root / "params.yaml").read_text())
    strategies = {**params["pretrain_strategies"]["scratch"], **params["pretrain_strategies"]["continued"]}
    for key in strategies:
        arch, state, pre, provenance = vit.load_export(root / "out" / "models" / key / "encoder.pt")
        assert (arch.embed_dim, arch.depth, arch.num_heads, arch.patch_size, arch.img_size) == (768, 12, 12, 16, 224)
        assert f"blocks.{arch.depth - 1}.attn.qkv.weight" in state and pre.input_size == 224
    assert provenance  # the last strategy's
    imagenet = vit.load_export(root / "out" / "models" / "imagenet" / "encoder.pt")[3]
    assert imagenet["init"]["format"] == "mae-official-full" and imagenet["init"]["decoder"] == "loaded"
    ckpt = torch.load(root / "out" / "models" / "ego_full" / "checkpoint.pt", map_location="cpu", weights_only=True,
                      mmap=True)
    assert ckpt["decoder_arch"] == {"embed_dim": 512, "depth": 8, "num_heads": 16, "mlp_ratio": 4.0}
    assert ckpt["config"]["norm_pix_loss"] is True and ckpt["epoch"] == 1
    for key in params["report"]["encoders"]:  # the probe's inputs: one 768-d feature per segment and row
        meta = json.loads((root / "out" / "features" / key / "meta.json").read_text())
        assert meta["embed_dim"] == 768, key
    dinov3 = json.loads((root / "data" / "weights" / "dinov3-vitb16" / "config.json").read_text())
    assert dinov3["model_type"] == "dinov3_vit"
    assert (dinov3["hidden_size"], dinov3["num_hidden_layers"], dinov3["patch_size"]) == (768, 12, 16)


def hidden_widths(state: dict[str, torch.Tensor]) -> list[int]:
    """Output widths of an rsl-rl MLP's hidden Linear layers (mlp.0, mlp.2, ...; the last is the head)."""
    layers = sorted((int(k.split(".")[1]), v) for k, v in state.items() if k.startswith("mlp.") and k.endswith("weight"))
    return [w.shape[0] for _, w in layers[:-1]]


@pytest.mark.slow
def test_rl_policies_have_the_paper_widths_and_views(smoke_run):
    root = smoke_run[0]
    params = yaml.safe_load((root / "params.yaml").read_text())
    every = [*params["rl"]["encoders"], *params["rl"]["baselines"]]
    runs = [f"{e}_s{s}" for e in every for s in params["rl"]["seeds"]]
    assert len(runs) == 7  # the table's six strategies and the DINOv3 baseline, one seed
    for name in runs:
        policy = torch.load(root / "out" / "rl" / name / "policy.pt", map_location="cpu", weights_only=True)
        assert hidden_widths(policy["actor_state_dict"]) == PAPER_WIDTHS, name
        assert policy["encoder"]["embed_dim"] == 768 and policy["config"]["env"]["image_size"] == 120
        # the two camera views' 768-d embeddings, then the 87 proprioceptive values (rl.envs.base.policy_obs)
        assert policy["obs_dims"]["policy"] == policy["actor_state_dict"]["mlp.0.weight"].shape[1] == 2 * 768 + 87
        last = sorted((root / "out" / "rl" / name / "checkpoints").glob("model_*.pt"))[-1]
        ckpt = torch.load(last, map_location="cpu", weights_only=True)
        assert hidden_widths(ckpt["critic_state_dict"]) == PAPER_WIDTHS, name


# ------------------------------------------------------------------------------------ the data formats
OFFICIAL_BLOCK = ("norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
                  "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight",
                  "mlp.fc2.bias")


def official_mae_keys(depth: int, decoder_depth: int) -> set[str]:
    """The state dict keys of facebookresearch/mae's MaskedAutoencoderViT (what `*_full.pth` holds)."""
    top = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias",
           "mask_token", "decoder_pos_embed", "decoder_embed.weight", "decoder_embed.bias", "decoder_norm.weight",
           "decoder_norm.bias", "decoder_pred.weight", "decoder_pred.bias"}
    return top | {f"{prefix}.{i}.{k}" for prefix, n in (("blocks", depth), ("decoder_blocks", decoder_depth))
                  for i in range(n) for k in OFFICIAL_BLOCK}


@pytest.mark.slow
def test_imagenet_init_is_in_the_official_full_layout(smoke_run):
    path = smoke_run[0] / "data" / "weights" / smoke_data.MAE_FILE
    obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    assert set(obj) == {"model"}
    state = obj["model"]
    assert set(state) == official_mae_keys(12, 8)
    assert state["pos_embed"].shape == (1, 197, 768) and state["decoder_pos_embed"].shape == (1, 197, 512)
    assert state["blocks.0.attn.qkv.weight"].shape == (3 * 768, 768)
    assert state["decoder_pred.weight"].shape == (16 * 16 * 3, 512)


@pytest.mark.slow
def test_dinov3_folder_builds_the_real_vitb16(smoke_run):
    from transformers import DINOv3ViTModel

    folder = smoke_run[0] / "data" / "weights" / smoke_data.DINOV3_DIR
    model = DINOv3ViTModel.from_pretrained(str(folder))
    config = model.config
    for key, value in smoke_data.DINOV3_VITB16.items():
        assert getattr(config, key) == value, key
    assert 85e6 < sum(p.numel() for p in model.parameters()) < 87e6  # ViT-B/16: 86 M parameters


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


@pytest.mark.slow
def test_epic_layout_has_the_real_schema(smoke_run, epic100_dir):
    epic = smoke_run[0] / "data" / "epic"
    ann = epic / "annotations"
    for split, real in (("train", "validation"), ("validation", "validation")):
        cols, rows = read_csv(ann / f"EPIC_100_{split}.csv")
        assert cols == read_csv(epic100_dir / f"EPIC_100_{real}.csv")[0] and rows
        for r in rows:
            with tarfile.open(epic / r["participant_id"] / "rgb_frames" / f"{r['video_id']}.tar") as tar:
                names = {Path(n).name for n in tar.getnames()}
            first, last = int(r["start_frame"]), int(r["stop_frame"])
            assert {f"frame_{n:010d}.jpg" for n in range(first, last + 1)} <= names
    for name in ("EPIC_100_verb_classes.csv", "EPIC_100_noun_classes.csv", "EPIC_100_video_info.csv"):
        ours, real = read_csv(ann / name), read_csv(epic100_dir / name)
        assert ours[0] == real[0], name
        if "classes" in name:
            assert len(ours[1]) == len(real[1]), name  # 97 verbs, 300 nouns: the probe heads' shapes


@pytest.mark.slow
def test_ego_shards_are_webdataset_tars_of_hevc_and_json(smoke_run):
    from handeye.data import video

    shards = sorted((smoke_run[0] / "data" / "ego").glob("*.tar"))
    assert len(shards) >= 2
    for shard in shards:
        with tarfile.open(shard) as tar:
            names = sorted(tar.getnames())
            keys = {Path(n).stem for n in names}
            assert names == sorted(f"{k}.{ext}" for k in keys for ext in ("json", "mp4"))
            for key in keys:
                meta = json.loads(tar.extractfile(f"{key}.json").read())
                clip = Path(tempfile.mkdtemp()) / f"{key}.mp4"
                clip.write_bytes(tar.extractfile(f"{key}.mp4").read())
                info = video.probe(clip)
                shutil.rmtree(clip.parent)
                assert info.codec == meta["codec"] == "hevc" and info.num_frames == meta["num_frames"]
                assert (info.height, info.width) == (meta["height"], meta["width"])
