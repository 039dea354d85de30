"""``handeye features`` sharded over torch.distributed ranks (gloo on the CPU): the batch plan, the merge of
every rank's features and skipped segments, world size 2 against world size 1 byte for byte, bad launches."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from handeye import features
from handeye.data import epic
from handeye.distributed import World
from handeye.errors import HandEyeError
from handeye.models import encoders, vit

TINY = vit.ViTArch(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
K, BATCH = 2, 4  # two segments per batch: the demo split spans several batches per video
# Train segments (CSV order) whose frames lie past their video's tar: in batches 1 and 2 of the plan, so on
# rank 1 and rank 0 of two; one process would report segment 2's frame as the example.
PAST_THE_TAR = (2, 4)


def segment(video: str, n: int) -> epic.Segment:
    return epic.Segment(f"{video}_{n}", video.split("_")[0], video, 0.0, 1.0, 1, 10, 0, 0)


# ------------------------------------------------------------------------------------------ batch plan
def interleaved() -> list[epic.Segment]:
    """Videos whose segments alternate in the CSV, as a real split's may."""
    order = ["P01_01", "P02_01", "P01_01", "P03_01", "P02_01", "P01_01", "P01_01", "P03_01", "P01_01", "P02_01"]
    return [segment(v, n) for n, v in enumerate(order)]


@pytest.mark.parametrize(("batch_size", "k"), [(4, 2), (64, 4), (3, 4), (5, 1)])
def test_the_plan_covers_every_segment_once_and_never_crosses_videos(batch_size, k):
    segs = interleaved()
    plan = features.plan_batches(segs, batch_size, k)
    flat = [i for batch in plan for i in batch]
    assert sorted(flat) == list(range(len(segs)))  # every segment in exactly one batch
    assert all(len({segs[i].video_id for i in batch}) == 1 for batch in plan)
    assert all(1 <= len(batch) <= max(1, batch_size // k) for batch in plan)
    # videos in order of first appearance, each video's segments in CSV order: how segment_frames reads them
    videos = list(dict.fromkeys(s.video_id for s in segs))
    assert flat == [i for v in videos for i, s in enumerate(segs) if s.video_id == v]


def test_rank_r_takes_every_nth_batch_and_the_ranks_together_take_the_plan():
    plan = features.plan_batches(interleaved(), 4, 2)
    for n in (1, 2, 3, 4, 7):
        shares = [features.rank_batches(plan, World(r, n, r)) for r in range(n)]
        assert all(share == plan[r::n] for r, share in enumerate(shares))
        together = [tuple(b) for share in shares for b in share]
        assert sorted(together) == sorted(map(tuple, plan)) and len(together) == len(plan)


def test_the_plan_is_segment_frames_reading_order(layout):
    split = epic.load_split(layout / "epic", "train")
    plan = features.plan_batches(split.segments, BATCH, K)
    read = [i for i, _ in epic.segment_frames(layout / "epic", split.segments, K, 32)]
    unread = {*PAST_THE_TAR, len(split.segments) - 1}  # the extra row's video does not exist
    assert read == [i for batch in plan for i in batch if i not in unread]


def test_frames_of_two_sizes_in_one_batch_are_refused():
    share = features._Share(embed_s=[0.0])
    chunk = [np.zeros((K, 8, 8, 3), np.uint8), np.zeros((K, 8, 10, 3), np.uint8)]
    with pytest.raises(HandEyeError, match=r"video P01_01: frames of different sizes"):
        features.embed_batch([encoders.random_encoder("vit_demo_patch8_64")], features.FeaturesConfig(), [0, 1],
                             chunk, "P01_01", share)


# ------------------------------------------------------------------------------------------- data
@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> Path:
    """The demo EPIC layout (2 videos, 6 train segments each), two train segments whose frames lie past
    their tar, one whose video does not exist, and a tiny encoder."""
    root = tmp_path_factory.mktemp("epicdist")
    epic.write_synthetic_layout(root / "epic", videos=("P01_01", "P02_01"), segments_per_video=12)
    train = root / "epic" / "annotations" / epic.SPLIT_FILES["train"]
    with open(train, newline="") as f:
        rows = list(csv.DictReader(f))
    for n in PAST_THE_TAR:
        rows[n]["stop_frame"] = str(int(rows[n]["stop_frame"]) + 1000)
    rows.append({**rows[0], "narration_id": "P09_01_0", "participant_id": "P09", "video_id": "P09_01"})
    with open(train, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    torch.manual_seed(0)
    vit.save_export(root / "tiny.pt", TINY, vit.build_vit(TINY).state_dict(),
                    vit.Preprocess(input_size=32, patch_size=8), {"strategy": "test"})
    return root


def fcfg(layout: Path, **kw) -> features.FeaturesConfig:
    return features.FeaturesConfig(data_dir=str(layout / "epic"), frames_per_segment=K, batch_size=BATCH,
                                   max_missing_fraction=0.5, threads=1, **kw)


def write_params(path: Path, layout: Path, **kw) -> Path:
    path.write_text(yaml.safe_dump({"features": {**fcfg(layout).__dict__, **kw}}))
    return path


# ------------------------------------------------------------------------------------------ merge
class Spy:
    """An encoder that remembers the batches it was given (md5 of their pixels): on this CPU the demo
    encoders give the same bits in any batch, so the bytes alone would not show a batch that moved."""

    def __init__(self, encoder: encoders.Encoder):
        self.name, self.preprocess, self.embed_dim = encoder.name, encoder.preprocess, encoder.embed_dim
        self.encoder, self.batches = encoder, []

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        self.batches.append(hashlib.md5(images.contiguous().numpy().tobytes()).hexdigest())
        return self.encoder.embed(images)


def test_every_segment_is_embedded_in_the_same_batch_whatever_the_world_size(layout):
    cfg = fcfg(layout)
    segs = epic.load_split(layout / "epic", "train").segments
    plan = features.plan_batches(segs, cfg.batch_size, cfg.frames_per_segment)
    seen = {}
    for n in (1, 2, 3):
        spies = [Spy(encoders.load_encoder(str(layout / "tiny.pt"))) for _ in range(n)]
        for r, spy in enumerate(spies):
            features.embed_share([spy], cfg, segs, features.rank_batches(plan, World(r, n, r)), "", False)
        seen[n] = sorted(b for spy in spies for b in spy.batches)
    assert len(seen[1]) == 6  # 7 planned batches, one of them only the segment whose video does not exist
    assert seen[2] == seen[1] and seen[3] == seen[1]


def test_shares_merged_in_plan_order_are_the_single_process_result(layout):
    """Two ranks' shares, made in this process, merge into one process's features and skip report (the
    first example of a reason comes from the earliest segment in the plan, not from the lowest rank)."""
    cfg = fcfg(layout)
    segs = epic.load_split(layout / "epic", "train").segments
    encs = [encoders.load_encoder(str(layout / "tiny.pt"), pooling=p) for p in ("cls", "mean")]  # one input size
    one = epic.MissingReport()
    feats, keep, _, _ = features.embed_segments(encs, cfg, segs, one)
    plan = features.plan_batches(segs, cfg.batch_size, cfg.frames_per_segment)
    shares = [features.embed_share(encs, cfg, segs, features.rank_batches(plan, World(r, 2, r)), "", False)
              for r in range(2)]
    assert set(shares[0].skipped) == {PAST_THE_TAR[1], 12} and set(shares[1].skipped) == {PAST_THE_TAR[0]}
    two = epic.MissingReport()
    merged, keep2, _, _ = features.merge_shares(shares, plan, two, len(encs), is_main=True)
    assert keep2 == keep == [i for i in range(len(segs)) if i not in (*PAST_THE_TAR, 12)]
    assert all(torch.equal(a, b) for a, b in zip(merged, feats, strict=True))
    assert (two.total, dict(two.reasons), two.examples) == (one.total, dict(one.reasons), one.examples)
    assert one.reasons == {"frames missing": 2, "video missing": 1}
    first_absent = segs[PAST_THE_TAR[0]].frame_numbers(K)[0]
    assert one.examples["frames missing"].endswith(f"frame_{first_absent:010d}.jpg")
    others, _, _, _ = features.merge_shares(shares, plan, epic.MissingReport(), len(encs), is_main=False)
    assert all(t.numel() == 0 for t in others)  # rank 0 alone stacks (and writes) the features


# ------------------------------------------------------------------------------------------ launches
def md5s(folder: Path) -> dict[str, str]:
    return {name: hashlib.md5((folder / name).read_bytes()).hexdigest()
            for name in ("train.pt", "validation.pt", "meta.json")}


def handeye(*args, cwd: Path) -> subprocess.CompletedProcess:
    """One process, no torchrun: the single-process reference run."""
    return subprocess.run([sys.executable, "-m", "handeye", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300, check=False)


def error_lines(done) -> list[str]:
    return [line for p in done for line in (p.stdout + p.stderr).splitlines() if line.startswith("handeye: error:")]


@pytest.mark.slow
def test_two_ranks_write_the_bytes_of_one_process(layout, tmp_path, torchrun):
    params = write_params(tmp_path / "params.yaml", layout)
    args = ["features", "--checkpoint", layout / "tiny.pt", "--params", params]
    one = handeye(*args, "--out", tmp_path / "one", cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-2000:]
    two = torchrun(2, *args, "--out", tmp_path / "two", cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-2000:]
    assert md5s(tmp_path / "two") == md5s(tmp_path / "one")
    meta = json.loads((tmp_path / "two" / "meta.json").read_text())
    assert meta["splits"]["train"]["skipped"] == 3 and meta["splits"]["train"]["segments"] == 10
    for folder, world_size in (("one", 1), ("two", 2)):
        manifest = json.loads((tmp_path / folder / "run_manifest.json").read_text())
        assert manifest["launch"] == {"world_size": world_size, "device": "cpu"}
        assert json.loads((tmp_path / folder / "timings.json").read_text())["world_size"] == world_size
    assert two.stdout.count("features of ") == 1 and two.stdout.count("train: 3 of 13 segments skipped") == 1


@pytest.mark.slow
def test_too_many_skips_over_all_ranks_stop_every_rank_with_one_line(layout, tmp_path, torchrun):
    params = write_params(tmp_path / "params.yaml", layout, max_missing_fraction=0.1)
    done = torchrun(2, "features", "--checkpoint", layout / "tiny.pt", "--params", params,
                    "--out", tmp_path / "out" / "f", cwd=tmp_path)
    lines = error_lines([done])
    assert done.returncode != 0 and len(lines) == 1, done.stderr[-2000:]
    assert "3 of 13 segments skipped" in lines[0] and "above the allowed fraction 0.1" in lines[0]
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())  # not even a temp folder


@pytest.mark.slow
def test_a_rank_without_data_stops_every_rank_with_one_line(layout, tmp_path, ranks):
    params = write_params(tmp_path / "params.yaml", layout)
    common = ["features", "--checkpoint", layout / "tiny.pt", "--params", params, "--out", tmp_path / "out" / "f"]
    done = ranks([common, [*common, "--data-dir", tmp_path / "missing"]], cwd=tmp_path)
    lines = error_lines(done)
    assert all(p.returncode == 2 for p in done) and len(lines) == 1, [p.stderr[-1000:] for p in done]
    assert lines[0] == f"handeye: error: rank 1 of 2: EPIC data folder {tmp_path / 'missing'} not found " \
                       f"(features.data_dir / --data-dir)"
    assert not any("Traceback" in p.stderr for p in done)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_params_that_differ_between_ranks_stop_every_rank_with_one_line(layout, tmp_path, ranks):
    common = ["features", "--checkpoint", layout / "tiny.pt", "--out", tmp_path / "out" / "f"]
    done = ranks([[*common, "--params", write_params(tmp_path / "a.yaml", layout)],
                  [*common, "--params", write_params(tmp_path / "b.yaml", layout, frames_per_segment=1)]],
                 cwd=tmp_path)
    lines = error_lines(done)
    assert all(p.returncode == 2 for p in done) and len(lines) == 1, [p.stderr[-1000:] for p in done]
    assert "features parameters differ between ranks (frames_per_segment: 2 on rank 0, 1 on rank 1)" in lines[0]
    assert not any("Traceback" in p.stderr for p in done)
    assert not (tmp_path / "out").exists()
