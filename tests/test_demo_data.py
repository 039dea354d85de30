"""handeye demo-data: determinism, layout, EPIC schema, video codecs and frame counts, bad output folders."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import av
import numpy as np
import pytest
import yaml

from handeye.cli import main as cli_main
from handeye.config import load_config
from handeye.data import demo_data as dd
from handeye.repro import file_md5
from handeye.sim.demo_shots import NOUNS, VERBS

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "size": 32, "ego_clips": 2, "ego_frames": 12, "epic_participants": 3, "epic_val_participants": 1,
    "epic_videos": 2, "epic_segments": 3, "epic_lead_in": 2, "epic_hold_min": 3, "epic_hold_max": 5,
    "generic_images": 6, "generic_size": 24, "standin_hidden": 32, "standin_layers": 1, "standin_heads": 2,
    "standin_patch": 8, "standin_image": 32,
}


def tiny_cfg(**overrides) -> dd.DemoDataConfig:
    return load_config(dd.DemoDataConfig, "demo_data", REPO_ROOT / "params.yaml", {**TINY, **overrides})


def md5s(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): file_md5(p) for p in sorted(root.rglob("*")) if p.is_file()}


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames), list(reader)


def decode(path: Path) -> tuple[str, int, tuple[int, int]]:
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(stream)]
        return stream.codec_context.name, len(frames), frames[0].shape[:2]


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> tuple[Path, Path]:
    """The same tiny dataset twice: once rendered by one worker, once by two."""
    base = tmp_path_factory.mktemp("demo")
    dd.run_demo_data(tiny_cfg(workers=1), base / "a")
    dd.run_demo_data(tiny_cfg(workers=2), base / "b")
    return base / "a", base / "b"


@pytest.mark.slow
def test_same_seed_gives_identical_files_whatever_the_worker_count(generated):
    a, b = (md5s(root) for root in generated)
    assert a.keys() == b.keys()
    # The manifest records the config, which differs in `workers`; everything else must match bit for bit.
    differing = [name for name in a if a[name] != b[name]]
    assert differing == ["run_manifest.json"]
    assert not list(generated[0].parent.glob(".*tmp")), "temp folders left behind"


def moving_disc(size: int = 32, n: int = 12) -> np.ndarray:
    """uint8 (n, size, size, 3): a disc moving over a drifting stripe pattern, with seeded noise."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:size, :size]
    frames = []
    for t in range(n):
        f = np.broadcast_to(60 + 40 * np.sin((x + 2 * t) / 5.0)[..., None], (size, size, 3)).copy()
        f[(y - 10 - 1.5 * t) ** 2 + (x - 8 - t) ** 2 < 40] = (200, 80, 40)
        frames.append(np.clip(f + rng.normal(0, 4, f.shape), 0, 255).astype(np.uint8))
    return np.stack(frames)


def test_h265_bytes_depend_only_on_the_frames():
    """Repeated encodes in one process see different heap leftovers: with x265's defaults a picture one CTU
    wide read memory x265 never wrote, and most of these encodes differed (the old flaky ego clip)."""
    frames = moving_disc()
    assert len({dd.encode_video(frames, 30, "libx265", 24) for _ in range(6)}) == 1


@pytest.mark.slow
def test_layout_and_epic_schema(generated, epic100_dir):
    root = generated[0]
    ann = root / "epic" / "annotations"
    real_cols, _ = read_csv(epic100_dir / "EPIC_100_validation.csv")
    for split in ("train", "validation"):
        cols, rows = read_csv(ann / f"EPIC_100_{split}.csv")
        assert cols == real_cols and rows
    for kind in ("verb", "noun"):
        cols, rows = read_csv(ann / f"EPIC_100_{kind}_classes.csv")
        assert cols == read_csv(epic100_dir / f"EPIC_100_{kind}_classes.csv")[0]
        assert [r["key"] for r in rows] == [x.name for x in (VERBS if kind == "verb" else NOUNS)]
    info = "EPIC_100_video_info.csv"
    assert read_csv(ann / info)[0] == read_csv(epic100_dir / info)[0]
    assert (root / "run_manifest.json").is_file()
    assert len(list((root / "generic").rglob("*.jpg"))) == TINY["generic_images"]
    standin = root / "weights" / "dinov3-standin"
    assert {"config.json", "model.safetensors", "README.txt"} <= {p.name for p in standin.iterdir()}
    assert "stand-in" in (standin / "README.txt").read_text()


@pytest.mark.slow
def test_segments_match_their_videos(generated):
    root = generated[0]
    ann = root / "epic" / "annotations"
    info = {r["video_id"]: r for r in read_csv(ann / "EPIC_100_video_info.csv")[1]}
    participants = {}
    for split in ("train", "validation"):
        rows = read_csv(ann / f"EPIC_100_{split}.csv")[1]
        participants[split] = {r["participant_id"] for r in rows}
        for r in rows:
            fps = float(info[r["video_id"]]["fps"])
            start = _seconds(r["start_timestamp"])
            stop = _seconds(r["stop_timestamp"])
            # 1-based inclusive frame numbers, consistent with the timestamps at the video's fps.
            assert int(r["start_frame"]) == round(start * fps) + 1
            assert int(r["stop_frame"]) == round(stop * fps)
            assert r["narration"] == f"{r['verb']} {r['noun']}"
            assert VERBS[int(r["verb_class"])].name == r["verb"]
            assert NOUNS[int(r["noun_class"])].name == r["noun"]
            assert json.loads(r["all_noun_classes"]) == [int(r["noun_class"])]
            video = root / "epic" / r["participant_id"] / "videos" / f"{r['video_id']}.MP4"
            codec, n, shape = decode(video)
            assert codec == "h264" and shape == (TINY["size"], TINY["size"])
            assert int(r["stop_frame"]) <= n == round(float(info[r["video_id"]]["duration"]) * fps)
    assert participants["train"] and participants["validation"]
    assert not participants["train"] & participants["validation"]


@pytest.mark.slow
def test_ego_clips_are_hevc_with_their_json(generated):
    clips = sorted((generated[0] / "ego").glob("*.mp4"))
    assert len(clips) == TINY["ego_clips"]
    for clip in clips:
        meta = json.loads(clip.with_suffix(".json").read_text())
        codec, n, shape = decode(clip)
        assert codec == meta["codec"] == "hevc"
        assert n == meta["num_frames"] == TINY["ego_frames"]
        assert shape == (meta["height"], meta["width"]) == (TINY["size"], TINY["size"])
        assert {"fps", "duration", "factory_id", "worker_id"} <= meta.keys()


@pytest.mark.slow
def test_frames_show_more_than_the_background(generated):
    """A rendering regression (empty scene, black frames) would still decode fine; the hand must be there."""
    with av.open(str(min((generated[0] / "ego").glob("*.mp4")))) as c:
        frame = next(c.decode(video=0)).to_ndarray(format="rgb24").astype(float)
    assert frame.std(axis=(0, 1)).mean() > 10


@pytest.mark.slow
def test_standin_loads_as_dinov3(generated):
    import torch
    from transformers import DINOv3ViTModel

    model = DINOv3ViTModel.from_pretrained(generated[0] / "weights" / "dinov3-standin").eval()
    with torch.no_grad():
        out = model(pixel_values=torch.zeros(1, 3, TINY["standin_image"], TINY["standin_image"]))
    assert out.pooler_output.shape == (1, TINY["standin_hidden"])
    assert model.embeddings.cls_token.abs().sum() > 0  # seeded random init, not zeros


def test_default_params_meet_the_dataset_requirements():
    cfg = load_config(dd.DemoDataConfig, "demo_data", REPO_ROOT / "params.yaml")
    jobs = dd.plan_jobs(cfg)
    ego = [j for j in jobs if j.kind == "ego"]
    epic = [j for j in jobs if j.kind == "epic"]
    assert len(ego) >= 30 and len(ego) * cfg.ego_frames >= 5000
    per_split = {"train": 0, "validation": 0}
    labels = set()
    for job in epic:
        per_split[dd.split_of(cfg, Path(job.path).parts[1])] += len(job.segments)
        labels |= {(s.verb, s.noun) for s in job.segments}
    assert per_split["train"] >= 600 and per_split["validation"] >= 200
    assert len(VERBS) >= 8 and len(NOUNS) >= 6
    assert {v for v, _ in labels} == set(range(len(VERBS)))
    assert {n for _, n in labels} == set(range(len(NOUNS)))


def test_labels_are_balanced():
    counts = np.bincount(dd.balanced(np.random.default_rng(0), 9, 100), minlength=9)
    assert counts.max() - counts.min() <= 1


@pytest.mark.parametrize(("units", "decimals", "text"), [(0, 2, "00:00:00.00"), (6104, 2, "00:01:01.04"),
                                                   (3723456, 3, "01:02:03.456")])
def test_timestamp_format_is_epics(units, decimals, text):
    assert dd.timestamp(units, decimals) == text


def write_tiny_params(path: Path) -> Path:
    path.write_text(yaml.safe_dump({"demo_data": {**TINY, "workers": 1}}))
    return path


def test_output_under_a_file_is_a_one_line_error(tmp_path, capsys):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    params = write_tiny_params(tmp_path / "params.yaml")
    assert cli_main(["demo-data", "--out", str(blocker / "data"), "--params", str(params)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("handeye: error:") and "\n" not in err and str(blocker / "data") in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_parent_is_a_one_line_error(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    params = write_tiny_params(tmp_path / "params.yaml")
    try:
        assert cli_main(["demo-data", "--out", str(ro / "data"), "--params", str(params)]) == 2
    finally:
        ro.chmod(0o755)
    assert "\n" not in capsys.readouterr().err.strip()


def test_refuses_to_replace_a_folder_it_did_not_write(tmp_path, capsys):
    precious = tmp_path / "data"
    precious.mkdir()
    (precious / "thesis.tex").write_text("x")
    params = write_tiny_params(tmp_path / "params.yaml")
    assert cli_main(["demo-data", "--out", str(precious), "--params", str(params)]) == 2
    assert "not a demo-data output" in capsys.readouterr().err
    assert (precious / "thesis.tex").is_file()


def test_a_failed_run_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("killed mid-render")

    monkeypatch.setattr(dd, "render_all", crash)
    with pytest.raises(RuntimeError):
        dd.run_demo_data(tiny_cfg(), tmp_path / "data")
    assert list(tmp_path.iterdir()) == []


def _seconds(ts: str) -> float:
    h, m, s = ts.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


@pytest.mark.parametrize(("override", "message"), [({"epic_fps": 30}, "must divide 100"),
                                               ({"nuisance": 1.5}, "nuisance"),
                                               ({"max_distractors": 99}, "max_distractors"),
                                               ({"size": 40}, "multiple of 16")])
def test_bad_parameters_are_one_line_errors(tmp_path, override, message):
    from handeye.errors import HandEyeError

    with pytest.raises(HandEyeError, match=message):
        dd.run_demo_data(tiny_cfg(**override), tmp_path / "data")
    assert list(tmp_path.iterdir()) == []


def test_x264_bytes_do_not_depend_on_what_ran_in_the_process_before():
    """x264's AVX-512 kernels read heap memory they never wrote, and an x265 encode leaves it dirty: without
    X264_X86_PARAMS each of these encodes gave other bytes on an AVX-512 CPU (on others this cannot fail)."""
    rng = np.random.default_rng(0)
    t, y, x = np.arange(20)[:, None, None, None], np.arange(96)[:, None, None], np.arange(96)[:, None]
    waves = (np.sin((x + 3 * t) / 7.0) + np.cos((y - 2 * t) / 5.0)) * 60 + 128
    frames = (waves + rng.normal(0, 8, (20, 96, 96, 3))).clip(0, 255).astype(np.uint8)
    videos = set()
    for _ in range(4):
        dd.encode_video(frames[:12], 30, "libx265", 24)
        videos.add(dd.encode_video(frames, 25, "libx264", 20))
    assert len(videos) == 1
