"""EPIC-KITCHENS-100 loader: the real annotation schema, frames from tars and videos, and every bad input."""

from __future__ import annotations

import csv
import io
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from handeye.data import epic
from handeye.errors import HandEyeError

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "epic100"
needs_real = pytest.mark.skipif(not (SHARED / "EPIC_100_validation.csv").is_file(),
                                reason="../shared/epic100 (real EPIC-100 annotation CSVs) not present")


def real_annotations() -> epic.Annotations:
    return epic.load_annotations(SHARED / "EPIC_100_validation.csv", SHARED / epic.VERB_CLASSES,
                                 SHARED / epic.NOUN_CLASSES)


@needs_real
def test_real_validation_csv_loads():
    ann = real_annotations()
    assert len(ann.verbs) == 97 and len(ann.nouns) == 300
    with open(SHARED / "EPIC_100_validation.csv") as f:
        assert len(ann.segments) == sum(1 for _ in f) - 1
    first = ann.segments[0]
    assert (first.narration_id, first.video_id) == ("P01_11_0", "P01_11")
    assert (first.start_frame, first.stop_frame) == (1, 113)
    assert first.stop_time == pytest.approx(1.89) and ann.verbs[first.verb_class] == "take"


def _frame_image(n: int) -> Image.Image:
    """A flat 24x32 JPEG whose colour encodes its frame number n (< 4096), robust to JPEG rounding."""
    return Image.new("RGB", (32, 24), (16 * (n % 16), 16 * (n // 16 % 16), 16 * (n // 256)))


def _decode_number(frame: np.ndarray) -> int:
    r, g, b = (round(c / 16) for c in frame.reshape(-1, 3).mean(0))
    return r + 16 * g + 256 * b


@needs_real
def test_real_schema_with_frames_from_a_tar(tmp_path):
    """The first segments of the real validation CSV, read from an rgb_frames tar the test writes."""
    segs = [s for s in real_annotations().segments if s.video_id == "P01_11" and s.stop_frame < 4096][:6]
    assert len(segs) == 6
    tar_path = tmp_path / "P01" / "rgb_frames" / "P01_11.tar"
    tar_path.parent.mkdir(parents=True)
    with tarfile.open(tar_path, "w") as tar:
        for n in sorted({n for s in segs for n in range(s.start_frame, s.stop_frame + 1)}):
            buf = io.BytesIO()
            _frame_image(n).save(buf, format="JPEG", quality=95)
            info = tarfile.TarInfo(f"./frame_{n:010d}.jpg")
            info.size = buf.tell()
            buf.seek(0)
            tar.addfile(info, buf)
    missing = epic.MissingReport()
    got = dict(epic.segment_frames(tmp_path, segs, 5, missing=missing))
    assert missing.skipped == 0 and sorted(got) == list(range(len(segs)))
    for i, seg in enumerate(segs):
        numbers = [_decode_number(f) for f in got[i]]
        assert numbers == seg.frame_numbers(5)
        assert all(seg.start_frame <= n <= seg.stop_frame for n in numbers)


def test_frame_numbers_are_slice_centres():
    seg = epic.Segment("x", "P01", "P01_01", 0.0, 1.0, 11, 20, 0, 0)
    assert seg.frame_numbers(2) == [13, 18]
    assert seg.frame_numbers(10) == list(range(11, 21))
    assert seg.frame_numbers(20)[0] == 11 and seg.frame_numbers(20)[-1] == 20  # more K than frames: repeats
    assert seg.timestamps(2) == [0.25, 0.75]


def test_video_and_tar_give_the_same_frames(tmp_path):
    """The same layout as JPEG tars and as H.264 videos: timestamps pick the frames the frame numbers do."""
    tar_root = epic.write_synthetic_layout(tmp_path / "tar", source="tar", segments_per_video=4)
    vid_root = epic.write_synthetic_layout(tmp_path / "vid", source="video", segments_per_video=4)
    ann = epic.load_split(tar_root, "train")
    a = dict(epic.segment_frames(tar_root, ann.segments, 3))
    b = dict(epic.segment_frames(vid_root, epic.load_split(vid_root, "train").segments, 3))
    assert a.keys() == b.keys() and len(a) == len(ann.segments)
    for i, frames in a.items():
        assert frames.shape == b[i].shape == (3, 40, 56, 3)
        assert np.abs(frames.astype(int) - b[i].astype(int)).mean() < 6  # JPEG vs H.264 rounding only
    # frames of another segment differ far more: the match above is not trivially true
    assert np.abs(a[0].astype(int) - b[1].astype(int)).mean() > 6 or \
        ann.segments[0].noun_class == ann.segments[1].noun_class


def test_short_side_resize(tmp_path):
    root = epic.write_synthetic_layout(tmp_path, segments_per_video=2)
    ann = epic.load_split(root, "train")
    (_, frames), *_ = epic.segment_frames(root, ann.segments, 2, short_side=20)
    assert frames.shape == (2, 20, 28, 3) and frames.dtype == np.uint8


def test_missing_videos_are_counted_skipped_and_checked(tmp_path):
    root = epic.write_synthetic_layout(tmp_path, videos=("P01_01", "P02_01", "P03_01", "P04_01"),
                                       segments_per_video=4)
    shutil.rmtree(root / "P02")
    ann = epic.load_split(root, "train")
    missing = epic.MissingReport()
    got = dict(epic.segment_frames(root, ann.segments, 2, missing=missing))
    assert missing.total == 8 and missing.skipped == 2 and len(got) == 6
    assert all(ann.segments[i].video_id != "P02_01" for i in got)
    assert "2 of 8 segments skipped: 2 video missing" in missing.summary()
    assert "P02_01" in missing.summary()
    missing.check(0.25, "train")  # 2/8 allowed
    with pytest.raises(HandEyeError, match=r"above the allowed fraction 0.1"):
        missing.check(0.1, "train")


def test_missing_frames_in_a_tar_are_counted(tmp_path):
    root = epic.write_synthetic_layout(tmp_path, videos=("P01_01",), segments_per_video=4)
    tar_path = root / "P01" / "rgb_frames" / "P01_01.tar"
    with tarfile.open(tar_path) as tar:
        keep = [(m, tar.extractfile(m).read()) for m in tar.getmembers() if int(m.name[-14:-4]) <= 6]
    with tarfile.open(tar_path, "w") as tar:  # only the first segment's frames remain
        for m, data in keep:
            tar.addfile(m, io.BytesIO(data))
    missing = epic.MissingReport()
    got = dict(epic.segment_frames(root, epic.load_split(root, "train").segments, 2, missing=missing))
    assert list(got) == [0] and missing.reasons == {"frames missing": 1}


def test_segment_past_the_end_of_a_video_is_counted(tmp_path):
    root = epic.write_synthetic_layout(tmp_path, videos=("P01_01",), segments_per_video=4, source="video")
    path = root / "annotations" / "EPIC_100_train.csv"
    rows = list(csv.reader(path.read_text().splitlines()))
    rows[-1][4], rows[-1][5] = "00:01:00.00", "00:01:02.00"  # far beyond the 0.8 s video
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    missing = epic.MissingReport()
    got = dict(epic.segment_frames(root, epic.load_split(root, "train").segments, 2, missing=missing))
    assert list(got) == [0] and missing.reasons == {"past the end of the video": 1}


# ------------------------------------------------------------------------------------ bad annotations


def _edit_csv(path: Path, edit) -> None:
    rows = list(csv.DictReader(path.read_text().splitlines()))
    header = list(rows[0].keys())
    rows, header = edit(rows, header)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, header, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


@pytest.fixture
def layout(tmp_path):
    return epic.write_synthetic_layout(tmp_path, videos=("P01_01",), segments_per_video=4)


def test_missing_columns(layout):
    path = layout / "annotations" / "EPIC_100_train.csv"
    _edit_csv(path, lambda rows, h: (rows, [c for c in h if c not in ("verb_class", "stop_frame")]))
    with pytest.raises(HandEyeError, match=r"EPIC_100_train\.csv lacks column\(s\) stop_frame, verb_class"):
        epic.load_split(layout, "train")


def test_class_id_out_of_range(layout):
    path = layout / "annotations" / "EPIC_100_train.csv"

    def edit(rows, h):
        rows[1]["noun_class"] = "4"  # the layout has nouns 0..3
        return rows, h

    _edit_csv(path, edit)
    with pytest.raises(HandEyeError, match=r"line 3: noun_class 4 out of range 0\.\.3"):
        epic.load_split(layout, "train")


def test_non_integer_and_bad_timestamp(layout):
    path = layout / "annotations" / "EPIC_100_train.csv"
    _edit_csv(path, lambda rows, h: ([{**rows[0], "verb_class": "take"}], h))
    with pytest.raises(HandEyeError, match="verb_class must be an integer, got 'take'"):
        epic.load_split(layout, "train")
    _edit_csv(path, lambda rows, h: ([{**rows[0], "verb_class": "0", "start_timestamp": "1.5"}], h))
    with pytest.raises(HandEyeError, match=r"start_timestamp must be HH:MM:SS.ff"):
        epic.load_split(layout, "train")


def test_empty_split(layout):
    _edit_csv(layout / "annotations" / "EPIC_100_validation.csv", lambda rows, h: ([], h))
    with pytest.raises(HandEyeError, match="no segments"):
        epic.load_split(layout, "validation")


def test_class_list_with_gaps_and_missing_file(layout):
    path = layout / "annotations" / epic.VERB_CLASSES
    _edit_csv(path, lambda rows, h: (rows[:1] + rows[2:], h))
    with pytest.raises(HandEyeError, match=r"class ids must be 0..1 without gaps"):
        epic.load_split(layout, "train")
    path.unlink()
    with pytest.raises(HandEyeError, match=r"EPIC_100_verb_classes.csv not found"):
        epic.load_split(layout, "train")
