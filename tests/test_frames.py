"""extract-frames: exact frames in shards, each input layout, dedup, atomic reproducible output, bad input."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import pickle
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_video import CODECS, index_frame, read_index, write_video

from handeye import cli
from handeye.data import dedup, frames
from handeye.errors import HandEyeError
from handeye.models.vit import Preprocess

RES = 32


class BlockEncoder:
    """A tiny stand-in encoder (Encoder protocol): 8x8 block means of the centred image."""

    name = "blocks"
    preprocess = Preprocess(input_size=RES)
    embed_dim = 8 * 8 * 3

    def __init__(self, fail_after: int | None = None):
        self.calls, self.fail_after = 0, fail_after

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("encoder crashed")
        x = images.float() - 128
        return torch.nn.functional.adaptive_avg_pool2d(x, 8).flatten(1)


def config(**kw) -> frames.FramesConfig:
    base = {"resolution": RES, "fps": None, "every_n": 1, "dedup": False, "shard_size": 16}
    return frames.FramesConfig(**{**base, **kw})


def run(cfg, src, out, **kw) -> frames.FramesResult:
    return frames.run_frames(cfg, src, out, progress=False, **kw)


def rows(out: Path) -> list[dict]:
    with open(out / "frames.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A folder of one H.264 and one H.265 clip (60 index frames, 30 fps, a keyframe every 4th) with
    Ego10K-like sidecars."""
    d = tmp_path_factory.mktemp("corpus")
    for codec in CODECS:
        write_video(d / f"{codec}.mp4", codec, gop=4)
        (d / f"{codec}.json").write_text(json.dumps({"fps": 30, "codec": codec}))
    return d


# every_n 12 (3 keyframe intervals a request) sends H.264 through decord's seeking, the others through one
# PyAV pass (video.choose_backend)
@pytest.mark.parametrize("sampling", [{"every_n": 12}, {"every_n": None, "fps": 4.0}, {"every_n": 1}])
def test_shards_hold_exactly_the_requested_frames(corpus, tmp_path, sampling):
    result = run(config(**sampling), corpus, tmp_path / "out")
    table = rows(tmp_path / "out")
    expected = list(range(0, 60, sampling["every_n"] or 1)) if "fps" not in sampling else \
        [int(k * 30 / 4) for k in range(8)]
    for codec in CODECS:
        assert [int(r["frame_index"]) for r in table if r["video"] == f"{codec}.mp4"] == expected
    ds = frames.FrameDataset(tmp_path / "out")
    assert len(ds) == len(table) == result.frames_kept == 2 * len(expected)
    assert ds.resolution == (RES, RES)
    for i, r in enumerate(table):
        img = ds[i]
        assert img.dtype == torch.uint8 and img.shape == (3, RES, RES)
        assert read_index(img.permute(1, 2, 0).numpy()) == int(r["frame_index"])
        assert hashlib.sha1(img.permute(1, 2, 0).contiguous().numpy().tobytes()).hexdigest() == r["sha1"]
        assert float(r["timestamp"]) == pytest.approx(int(r["frame_index"]) / 30, abs=1e-6)
    shards = sorted((tmp_path / "out" / "shards").glob("*.npy"))
    assert [np.load(s).shape[0] for s in shards][:-1] == [16] * (len(shards) - 1)


def test_rerun_is_byte_identical_and_replaces_atomically(corpus, tmp_path):
    out = tmp_path / "out"
    run(config(every_n=5), corpus, out)
    first = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    run(config(every_n=5), corpus, out)
    second = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert first.keys() == second.keys()
    volatile = {Path("run_manifest.json"), Path("timings.json")}
    assert {k for k in first if first[k] != second[k]} <= volatile
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp folders left beside


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_image_format_names_files_by_source_index(corpus, tmp_path, fmt):
    run(config(every_n=9, format=fmt), corpus, tmp_path / "out")
    for codec in CODECS:
        names = sorted(p.name for p in (tmp_path / "out" / codec).iterdir())
        assert names == [f"frame_{i:010d}.{fmt}" for i in range(0, 60, 9)]
        for name in names:
            img = np.asarray(Image.open(tmp_path / "out" / codec / name))
            assert img.shape == (RES, RES, 3) and read_index(img) == int(name[6:16])
    assert list(rows(tmp_path / "out")[0]) == list(frames.IMAGE_CSV_COLUMNS)


def test_webdataset_tar_shards(corpus, tmp_path):
    src = tmp_path / "ego"
    src.mkdir()
    with tarfile.open(src / "shard-000000.tar", "w") as tar:
        for codec in CODECS:
            tar.add(corpus / f"{codec}.mp4", arcname=f"clip_{codec}.mp4")
            tar.add(corpus / f"{codec}.json", arcname=f"clip_{codec}.json")
    run(config(every_n=11), src, tmp_path / "out")
    table = rows(tmp_path / "out")
    assert sorted({r["video"] for r in table}) == [f"shard-000000.tar/clip_{c}.mp4" for c in ("h264", "hevc")]
    ds = frames.FrameDataset(tmp_path / "out")
    assert [read_index(ds[i].permute(1, 2, 0).numpy()) for i in range(len(ds))] == \
        [int(r["frame_index"]) for r in table]


def test_folder_of_images(tmp_path):
    src = tmp_path / "generic"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(index_frame(5)).save(src / "a.png")
    Image.fromarray(index_frame(9)).save(src / "sub" / "b.jpg", quality=95)
    run(config(), src, tmp_path / "out")
    table = rows(tmp_path / "out")
    assert [(r["video"], r["frame_index"]) for r in table] == [("a.png", "0"), ("sub/b.jpg", "0")]
    ds = frames.FrameDataset(tmp_path / "out")
    assert [read_index(ds[i].permute(1, 2, 0).numpy()) for i in range(2)] == [5, 9]


def test_dedup_encoder_is_loaded_only_when_a_source_has_frames_to_compare(tmp_path):
    """Images are sources of one frame: the dedup encoder (seconds to load) is never needed for them."""
    src = tmp_path / "generic"
    src.mkdir()
    Image.fromarray(index_frame(5)).save(src / "a.png")
    cfg = config(dedup=True, dedup_encoder="no/such/encoder")
    assert run(cfg, src, tmp_path / "out").frames_kept == 1
    clips = tmp_path / "clips"
    clips.mkdir()
    write_video(clips / "c.mp4", "h264", frames=[index_frame(3)] * 4)
    with pytest.raises(HandEyeError, match="no/such/encoder"):
        run(cfg, clips, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


def test_a_folder_of_images_is_extracted_without_importing_torch(tmp_path):
    """torch's import is most of a small image stage's time (the demo's generic/: 1.5 s against 6.3 s)."""
    src = tmp_path / "generic"
    src.mkdir()
    Image.fromarray(index_frame(5)).save(src / "a.png")
    code = ("import sys; from handeye.data import frames; "
            f"frames.run_frames(frames.FramesConfig(resolution={RES}), {str(src)!r}, {str(tmp_path / 'out')!r}, "
            "progress=False); print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
    manifest = json.loads((tmp_path / "out" / "run_manifest.json").read_text())
    assert manifest["torch_threads"] is None and manifest["config"]["dedup"] is True


def _epic_csv(path: Path, segments: list[tuple[str, str, float, float]], fps: float) -> None:
    def ts(t: float) -> str:
        return f"{int(t // 3600):02d}:{int(t % 3600 // 60):02d}:{t % 60:05.2f}"

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["narration_id", "participant_id", "video_id", "narration_timestamp", "start_timestamp",
                    "stop_timestamp", "start_frame", "stop_frame", "narration", "verb", "verb_class", "noun",
                    "noun_class", "all_nouns", "all_noun_classes"])
        for nid, vid, start, stop in segments:
            w.writerow([nid, vid[:3], vid, ts(start), ts(start), ts(stop), int(start * fps) + 1,
                        int(stop * fps) + 1, "take plate", "take", 0, "plate", 2, "['plate']", "[2]"])
    for name in ("EPIC_100_verb_classes.csv", "EPIC_100_noun_classes.csv"):
        (path.parent / name).write_text("id,key,instances,category\n0,take,[],a\n1,put,[],a\n2,plate,[],b\n")


def test_epic_videos_sampled_inside_segments_and_past_end_warned(corpus, tmp_path, capsys):
    root = tmp_path / "epic"
    (root / "annotations").mkdir(parents=True)
    (root / "P01" / "videos").mkdir(parents=True)
    (root / "P01" / "videos" / "P01_01.MP4").write_bytes((corpus / "hevc.mp4").read_bytes())
    _epic_csv(root / "annotations" / "EPIC_100_train.csv",
              [("P01_01_0", "P01_01", 0.2, 0.5), ("P01_01_1", "P01_01", 1.0, 1.3),
               ("P01_01_2", "P01_01", 1.5, 2.5)], fps=30)  # the clip lasts 2.0 s
    run(config(every_n=None, fps=10.0), root, tmp_path / "out")
    assert "P01/videos/P01_01.MP4: annotation P01_01_2" in capsys.readouterr().err
    table = rows(tmp_path / "out")
    assert {r["video"] for r in table} == {"P01/videos/P01_01.MP4"}
    assert [int(r["frame_index"]) for r in table] == [6, 9, 12, 15, 30, 33, 36, 39]
    ds = frames.FrameDataset(tmp_path / "out")
    assert [read_index(ds[i].permute(1, 2, 0).numpy()) for i in range(len(ds))] == [int(r["frame_index"])
                                                                                  for r in table]


def test_epic_rgb_frames_tar(tmp_path, capsys):
    root = tmp_path / "epic"
    (root / "annotations").mkdir(parents=True)
    (root / "P02" / "rgb_frames").mkdir(parents=True)
    jpgs = tmp_path / "jpgs"
    jpgs.mkdir()
    with tarfile.open(root / "P02" / "rgb_frames" / "P02_03.tar", "w") as tar:
        for number in range(1, 41):  # frame_0000000001.jpg shows index 0
            Image.fromarray(index_frame(number - 1)).save(jpgs / f"frame_{number:010d}.jpg", quality=95)
            tar.add(jpgs / f"frame_{number:010d}.jpg", arcname=f"./frame_{number:010d}.jpg")
    _epic_csv(root / "annotations" / "EPIC_100_validation.csv",
              [("P02_03_0", "P02_03", 0.1, 0.3), ("P02_03_1", "P02_03", 1.0, 2.0)], fps=20)
    (root / "annotations" / "EPIC_100_video_info.csv").write_text(
        "video_id,duration,fps,resolution\nP02_03,2.0,20.0,96x64\n")
    run(config(every_n=2, epic_splits=["validation"]), root, tmp_path / "out")
    assert "P02/rgb_frames/P02_03.tar: annotation P02_03_1" in capsys.readouterr().err
    table = rows(tmp_path / "out")
    assert [int(r["frame_index"]) for r in table] == [2, 4, 6]  # frames 3..7 (1-based), every 2nd
    ds = frames.FrameDataset(tmp_path / "out")
    assert [read_index(ds[i].permute(1, 2, 0).numpy()) for i in range(len(ds))] == [2, 4, 6]


def _bad_files(d: Path, good: Path) -> dict[str, str]:
    """Write one of each bad input into ``d``; return {file name: expected warning fragment}."""
    import av

    data = good.read_bytes()
    (d / "notes.txt").write_text("not a video")
    (d / "text.mp4").write_text("not a video either")
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (d / "unsupported.mp4").write_bytes(data.replace(b"avc1", b"zzzz"))
    with av.open(str(d / "zero.mp4"), "w") as c:
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = 96, 64, "yuv420p"
        c.start_encoding()
    return {"notes.txt": "not a video", "text.mp4": "cannot open", "truncated.mp4": "cannot open",
            "unsupported.mp4": "unsupported codec", "zero.mp4": "no video stream"}


def test_bad_inputs_warn_and_the_rest_is_processed(corpus, tmp_path, capsys):
    src = tmp_path / "mixed"
    src.mkdir()
    (src / "good.mp4").write_bytes((corpus / "h264.mp4").read_bytes())
    expected = _bad_files(src, corpus / "h264.mp4")
    result = run(config(every_n=10), src, tmp_path / "out")
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    for name, fragment in expected.items():
        assert any(line.startswith(f"warning: {name}: ") and fragment in line for line in warnings), name
    assert (result.videos_ok, result.videos_failed, result.frames_kept) == (1, 4, 6)
    assert {r["video"] for r in rows(tmp_path / "out")} == {"good.mp4"}
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["per_video"]["zero.mp4"]["status"] == "failed"


def test_nothing_extracted_is_an_error_and_writes_nothing(corpus, tmp_path):
    src = tmp_path / "bad"
    src.mkdir()
    _bad_files(src, corpus / "h264.mp4")
    with pytest.raises(HandEyeError, match="no frames could be extracted"):
        run(config(), src, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]
    assert cli.main(["extract-frames", str(src), "--out", str(tmp_path / "out"), "--no-progress",
                     "--params", str(_params(tmp_path))]) == 2


def test_crash_midway_keeps_the_previous_output_whole(corpus, tmp_path):
    out = tmp_path / "out"
    run(config(every_n=10), corpus, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(RuntimeError, match="encoder crashed"):
        run(config(every_n=10, dedup=True), corpus, out, encoder=BlockEncoder(fail_after=1))
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_dedup_drops_repeated_frames(tmp_path):
    runs = [3, 1, 4, 1, 5, 2]  # pattern k shown runs[k] times in a row
    content = [k for k, n in enumerate(runs) for _ in range(n)]
    src = tmp_path / "clips"
    src.mkdir()
    write_video(src / "repeats.mp4", "hevc", frames=[index_frame(k) for k in content])
    result = run(config(dedup=True, dedup_threshold=0.99), src, tmp_path / "out", encoder=BlockEncoder())
    table = rows(tmp_path / "out")
    first_of_run = [int(np.sum(runs[:k])) for k in range(len(runs))]
    assert [int(r["frame_index"]) for r in table] == first_of_run
    ds = frames.FrameDataset(tmp_path / "out")
    assert [read_index(ds[i].permute(1, 2, 0).numpy()) for i in range(len(ds))] == list(range(len(runs)))
    assert result.per_video["repeats.mp4"] == {"status": "ok", "frames": 16, "kept": 6, "dropped": 10}
    assert (result.frames_kept, result.frames_dropped) == (6, 10)


def test_global_dedup_drops_a_copy_of_another_video(corpus, tmp_path):
    src = tmp_path / "copies"
    src.mkdir()
    for name in ("a.mp4", "b.mp4"):
        (src / name).write_bytes((corpus / "h264.mp4").read_bytes())
    kw = {"every_n": 10, "dedup": True, "dedup_threshold": 0.99}
    local = run(config(**kw), src, tmp_path / "local", encoder=BlockEncoder())
    both = run(config(**kw, dedup_global=True), src, tmp_path / "global", encoder=BlockEncoder())
    assert local.frames_kept == 12
    assert both.per_video["a.mp4"]["kept"] == 6 and both.per_video["b.mp4"]["kept"] == 0


def test_dedup_units():
    e = torch.nn.functional.normalize(torch.tensor([[1.0, 0], [1, 0.01], [0, 1], [1, 0], [0.01, 1]]), dim=1)
    # compared with the LAST kept frame only: row 4 is kept although row 2 is nearly the same
    assert dedup.keep_within_video(e, 0.99).tolist() == [True, False, True, True, True]
    index = dedup.CorpusIndex(0.99)
    assert index.keep_new(e[:3]).tolist() == [True, False, True]
    assert index.keep_new(e[3:]).tolist() == [False, False]
    assert len(index) == 2


def _params(tmp_path: Path) -> Path:
    p = tmp_path.parent / f"{tmp_path.name}_params.yaml"
    p.write_text("frames:\n  resolution: 32\n  dedup: false\n")
    return p


def test_cli(corpus, tmp_path, capsys):
    code = cli.main(["extract-frames", str(corpus), "--out", str(tmp_path / "out"), "--every-n", "20",
                     "--no-progress", "--params", str(_params(tmp_path))])
    assert code == 0
    assert "2 video(s) ok, 0 failed; 6 frames kept" in capsys.readouterr().out
    assert frames.FrameDataset(tmp_path / "out").resolution == (32, 32)


def test_config_errors(tmp_path):
    with pytest.raises(HandEyeError, match="both set"):
        run(config(fps=2.0, every_n=3), tmp_path, tmp_path / "out")
    with pytest.raises(HandEyeError, match="not found"):
        run(config(), tmp_path / "missing", tmp_path / "out")
    with pytest.raises(HandEyeError, match="not a frame-shard folder"):
        frames.FrameDataset(tmp_path)


def test_dedup_through_load_encoder(tmp_path):
    """The configured spec goes through handeye.models.encoders.load_encoder (a random demo-size ViT here)."""
    src = tmp_path / "clips"
    src.mkdir()
    write_video(src / "still.mp4", "h264", frames=[index_frame(3)] * 8 + [index_frame(4000)] * 4)
    cfg = config(dedup=True, dedup_threshold=0.999, dedup_encoder="random:vit_demo_patch8_64")
    result = run(cfg, src, tmp_path / "out")
    counts = result.per_video["still.mp4"]
    assert counts["frames"] == 12 and counts["kept"] + counts["dropped"] == 12
    assert 1 <= counts["kept"] <= 3 and int(rows(tmp_path / "out")[0]["frame_index"]) == 0


# ---------------------------------------------------------------------------------------------- format wds
def wds_rows(out: Path) -> list[dict]:
    table = rows(out)
    assert list(table[0]) == list(frames.WDS_CSV_COLUMNS)
    return table


def stream_members(out: Path) -> list[tuple[str, str, int, bytes]]:
    """(shard, member name, data offset, bytes) of every shard, read the way a stream reader does ("r|")."""
    found = []
    for shard in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(shard, "r|") as tar:
            for m in tar:
                found.append((shard.stem, m.name, m.offset_data, tar.extractfile(m).read()))
    return found


def decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.fixture(scope="module")
def wds_out(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wds") / "out"
    run(config(every_n=3, format="wds", shard_size=8), corpus, out)
    return out


def test_wds_shards_stream_in_order_and_random_access_equals_sequential_decode(wds_out):
    table, members = wds_rows(wds_out), stream_members(wds_out)
    assert [name for _, name, _, _ in members] == [f"{k:010d}.jpg" for k in range(len(table))]
    assert [s for s, _, _, _ in members] == [r["shard"] for r in table] == \
        [f"{k // 8:06d}" for k in range(len(table))]
    assert [int(r["offset"]) for r in table] == [k % 8 for k in range(len(table))]
    ds = frames.FrameDataset(wds_out)
    assert ds.format == "wds" and ds.resolution == (RES, RES) and len(ds) == len(table) == 40
    for i in np.random.default_rng(0).permutation(len(ds)):  # random order: no state carried between reads
        r, (_, _, data_offset, data) = table[i], members[i]
        assert (int(r["byte_offset"]), int(r["byte_size"])) == (data_offset, len(data))
        img = ds[int(i)]
        assert img.dtype == torch.uint8 and img.shape == (3, RES, RES)
        hwc = img.permute(1, 2, 0).contiguous().numpy()
        assert np.array_equal(hwc, decoded(data))
        assert hashlib.sha1(hwc.tobytes()).hexdigest() == r["sha1"]
        assert read_index(hwc) == int(r["frame_index"])


def test_wds_writer_is_deterministic(tmp_path):
    members = [(f"{k:010d}.jpg", bytes([k]) * (100 + 300 * k)) for k in range(3)]
    placed = [frames.write_tar(tmp_path / f"{n}.tar", members) for n in ("a", "b")]
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    assert placed[0] == placed[1] == [(512, 100), (1024 + 512, 400), (2048 + 512, 700)]
    with tarfile.open(tmp_path / "a.tar") as tar:
        headers = {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode, m.type) for m in tar.getmembers()}
    assert headers == {(0, 0, 0, "", "", 0o644, tarfile.REGTYPE)}


def test_wds_rerun_is_byte_identical(corpus, wds_out, tmp_path):
    out = tmp_path / "again"
    run(config(every_n=3, format="wds", shard_size=8), corpus, out)
    for name in ("frames.csv", "summary.json", *(f"shards/{p.name}" for p in (wds_out / "shards").iterdir())):
        assert (out / name).read_bytes() == (wds_out / name).read_bytes(), name


def test_wds_dataloader_workers_give_the_frames_of_one_process(wds_out):
    ds = frames.FrameDataset(wds_out)
    first = ds[5]  # the parent opens a shard before the workers fork: they must not share its handle
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0)).tolist()

    def load(workers: int) -> torch.Tensor:
        loader = torch.utils.data.DataLoader(ds, batch_size=6, sampler=order, num_workers=workers)
        return torch.cat(list(loader))

    alone = load(0)
    assert torch.equal(load(2), alone)
    assert torch.equal(alone[order.index(5)], first)
    copy = pickle.loads(pickle.dumps(ds))  # what a spawned worker gets: no open file in it
    assert torch.equal(copy[7], ds[7]) and torch.equal(ds[5], first)


def test_wds_damaged_shards_are_one_line_errors_naming_the_file(wds_out, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(wds_out, out)
    shard, table = out / "shards" / "000001.tar", wds_rows(out)
    data = bytearray(shard.read_bytes())
    shard.write_bytes(data[: int(table[12]["byte_offset"]) + 10])  # cut inside the 5th member of shard 1
    with pytest.raises(HandEyeError, match=f"^{re.escape(str(shard))}: truncated [^\n]*$"):
        frames.FrameDataset(out)

    def damaged(pos: int) -> str:
        """The error of reading the frame of row 12 with the 16 bytes at ``pos`` overwritten."""
        broken = bytearray(data)
        broken[pos:pos + 16] = b"\xff" * 16
        shard.write_bytes(broken)
        ds = frames.FrameDataset(out)
        assert torch.equal(ds[11], frames.FrameDataset(wds_out)[11])  # the rest still reads
        with pytest.raises(HandEyeError) as e:
            ds[12]
        assert str(e.value).startswith(f"{shard}: frame 12 ") and "\n" not in str(e.value)
        return str(e.value)

    assert "does not decode" in damaged(int(table[12]["byte_offset"]))  # the JPEG's first bytes
    assert "no tar member" in damaged(int(table[12]["byte_offset"]) - 512 + 124)  # its header's size field
    shutil.copy(wds_out / "shards" / "000000.tar", shard)  # offsets of row 12 now point into another file
    with pytest.raises(HandEyeError, match=r"000001.tar: frame 12 .*no tar member"):
        frames.FrameDataset(out)[12]


def test_wds_folder_errors(wds_out, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(wds_out, out)
    (out / "shards" / "000009.tar").write_bytes(b"")
    with pytest.raises(HandEyeError, match=r"frames.csv lists 40 frames in 5 of 6 .tar shards"):
        frames.FrameDataset(out)
    (out / "shards" / "000009.tar").rename(out / "shards" / "000009.npy")
    with pytest.raises(HandEyeError, match=r"both .npy and .tar shards"):
        frames.FrameDataset(out)
    (out / "shards" / "000009.npy").unlink()
    table = rows(out)
    frames.write_csv(out / "frames.csv", frames.CSV_COLUMNS, [[r[c] for c in frames.CSV_COLUMNS] for r in table])
    with pytest.raises(HandEyeError, match="no byte_offset,byte_size columns"):
        frames.FrameDataset(out)
    with pytest.raises(HandEyeError, match="jpg_quality must be in"):
        run(config(format="wds", jpg_quality=0), wds_out, tmp_path / "out")


def test_cli_format_wds_end_to_end(corpus, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli.main(["extract-frames", str(corpus), "--out", str(out), "--every-n", "20", "--format", "wds",
                     "--shard-size", "4", "--no-progress", "--params", str(_params(tmp_path))])
    assert code == 0
    assert "2 video(s) ok, 0 failed; 6 frames kept" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["000000.tar", "000001.tar"]
    assert json.loads((out / "summary.json").read_text())["shards"] == 2
    ds = frames.FrameDataset(out)
    assert (ds.format, ds.resolution, len(ds)) == ("wds", (32, 32), 6)
    assert [read_index(ds[i].permute(1, 2, 0).numpy()) for i in range(6)] == [0, 20, 40] * 2


def test_wds_streams_with_the_webdataset_library(wds_out):
    wds = pytest.importorskip("webdataset")
    urls = [str(p) for p in sorted((wds_out / "shards").glob("*.tar"))]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("rgb8"))
    ds = frames.FrameDataset(wds_out)
    assert [s["__key__"] for s in samples] == [f"{k:010d}" for k in range(len(ds))]
    assert all(np.array_equal(s["jpg"], ds[i].permute(1, 2, 0).numpy()) for i, s in enumerate(samples))
