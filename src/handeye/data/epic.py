"""EPIC-KITCHENS-100: validated action segments and the K frames sampled from each.

Layout (the real dataset and the demo's EPIC-style set alike)::

    ROOT/annotations/EPIC_100_{train,validation}.csv, EPIC_100_{verb,noun}_classes.csv
    ROOT/PXX/rgb_frames/PXX_YY.tar   frame_%010d.jpg, numbered as the CSV's start_frame/stop_frame
    ROOT/PXX/videos/PXX_YY.MP4       decoded at the CSV's timestamps (the CSV frame numbers refer to the
                                     extracted JPEGs, not to the MP4's native frames: FIELD_NOTES)

A segment's K frames are the centres of K equal slices of [start, stop]: deterministic, no RNG, and the same
instants whether read from the JPEG tar (frame numbers) or the video (timestamps).
"""

from __future__ import annotations

import contextlib
import csv
import io
import tarfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from handeye.errors import HandEyeError

SEGMENT_COLUMNS = ("narration_id", "participant_id", "video_id", "start_timestamp", "stop_timestamp",
                   "start_frame", "stop_frame", "verb_class", "noun_class")
CLASS_COLUMNS = ("id", "key")
SPLIT_FILES = {"train": "EPIC_100_train.csv", "validation": "EPIC_100_validation.csv"}
VERB_CLASSES, NOUN_CLASSES = "EPIC_100_verb_classes.csv", "EPIC_100_noun_classes.csv"


@dataclass(frozen=True)
class Segment:
    narration_id: str
    participant_id: str
    video_id: str
    start_time: float  # seconds
    stop_time: float
    start_frame: int  # 1-based, in the extracted rgb_frames numbering
    stop_frame: int
    verb_class: int
    noun_class: int

    def frame_numbers(self, k: int) -> list[int]:
        """K frame numbers (rgb_frames numbering): centres of K equal slices of [start_frame, stop_frame]."""
        span = self.stop_frame - self.start_frame + 1
        return [self.start_frame + min(span - 1, int((i + 0.5) * span / k)) for i in range(k)]

    def timestamps(self, k: int) -> list[float]:
        """K instants in seconds: centres of K equal slices of [start_time, stop_time]."""
        span = self.stop_time - self.start_time
        return [self.start_time + (i + 0.5) * span / k for i in range(k)]


@dataclass(frozen=True)
class Annotations:
    source: Path
    segments: tuple[Segment, ...]
    verbs: tuple[str, ...]  # class id -> key
    nouns: tuple[str, ...]


def load_annotations(csv_path: str | Path, verb_classes_csv: str | Path,
                     noun_classes_csv: str | Path) -> Annotations:
    """Read and validate one split. Missing columns, bad values and class ids out of range are one-line
    ``HandEyeError``s naming the file and line; a split with no segments is an error too."""
    verbs = read_classes(verb_classes_csv)
    nouns = read_classes(noun_classes_csv)
    rows = _read_csv(csv_path, SEGMENT_COLUMNS)
    segments = tuple(_segment(row, line, Path(csv_path), len(verbs), len(nouns)) for line, row in rows)
    if not segments:
        raise HandEyeError(f"{csv_path} has no segments (empty split)")
    return Annotations(Path(csv_path), segments, verbs, nouns)


def load_split(root: str | Path, split: str, annotations_dir: str | Path | None = None) -> Annotations:
    """``load_annotations`` for ``split`` (train, validation, or a CSV file name) of an EPIC layout."""
    ann = Path(annotations_dir) if annotations_dir else Path(root) / "annotations"
    name = SPLIT_FILES.get(split, split)
    return load_annotations(ann / name, ann / VERB_CLASSES, ann / NOUN_CLASSES)


def read_classes(path: str | Path) -> tuple[str, ...]:
    """A class list CSV (id,key,...) -> keys indexed by id; ids must be 0..n-1."""
    rows = _read_csv(path, CLASS_COLUMNS)
    keys: dict[int, str] = {}
    for line, row in rows:
        keys[_int(row, "id", line, path)] = row["key"]
    if not keys:
        raise HandEyeError(f"{path} lists no classes")
    if sorted(keys) != list(range(len(keys))):
        raise HandEyeError(f"{path}: class ids must be 0..{len(keys) - 1} without gaps")
    return tuple(keys[i] for i in range(len(keys)))


def _read_csv(path: str | Path, required: Sequence[str]) -> list[tuple[int, dict[str, str]]]:
    path = Path(path)
    if not path.is_file():
        raise HandEyeError(f"annotation file {path} not found")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise HandEyeError(f"{path} lacks column(s) {', '.join(missing)} (EPIC-KITCHENS-100 schema)")
        return [(reader.line_num, row) for row in reader]


def _segment(row: dict[str, str], line: int, path: Path, n_verbs: int, n_nouns: int) -> Segment:
    seg = Segment(
        narration_id=row["narration_id"], participant_id=row["participant_id"], video_id=row["video_id"],
        start_time=_time(row, "start_timestamp", line, path),
        stop_time=_time(row, "stop_timestamp", line, path),
        start_frame=_int(row, "start_frame", line, path), stop_frame=_int(row, "stop_frame", line, path),
        verb_class=_int(row, "verb_class", line, path), noun_class=_int(row, "noun_class", line, path),
    )
    if not 0 <= seg.verb_class < n_verbs:
        raise HandEyeError(f"{path} line {line}: verb_class {seg.verb_class} out of range 0..{n_verbs - 1}")
    if not 0 <= seg.noun_class < n_nouns:
        raise HandEyeError(f"{path} line {line}: noun_class {seg.noun_class} out of range 0..{n_nouns - 1}")
    if seg.stop_frame < seg.start_frame or seg.stop_time < seg.start_time or seg.start_frame < 0:
        raise HandEyeError(f"{path} line {line}: segment {seg.narration_id} ends before it starts")
    return seg


def _int(row: dict[str, str], col: str, line: int, path: str | Path) -> int:
    try:
        return int(row[col])
    except (TypeError, ValueError):
        raise HandEyeError(f"{path} line {line}: {col} must be an integer, got {row[col]!r}") from None


def _time(row: dict[str, str], col: str, line: int, path: Path) -> float:
    """'HH:MM:SS.ff' -> seconds."""
    try:
        h, m, s = row[col].split(":")
        return int(h) * 3600 + int(m) * 60 + float(s)
    except (AttributeError, ValueError):
        raise HandEyeError(f"{path} line {line}: {col} must be HH:MM:SS.ff, got {row[col]!r}") from None


# ------------------------------------------------------------------------------------------------ frames


@dataclass
class MissingReport:
    """Segments that could not be read, by reason; summarised once at the end of a split."""

    total: int = 0
    reasons: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)  # reason -> first file or segment it hit

    @property
    def skipped(self) -> int:
        return sum(self.reasons.values())

    def add(self, reason: str, example: str) -> None:
        self.reasons[reason] += 1
        self.examples.setdefault(reason, example)

    def summary(self) -> str:
        if not self.skipped:
            return f"all {self.total} segments read"
        parts = "; ".join(f"{n} {r} (e.g. {self.examples[r]})" for r, n in sorted(self.reasons.items()))
        return f"{self.skipped} of {self.total} segments skipped: {parts}"

    def check(self, max_fraction: float, split: str) -> None:
        """Error when more than ``max_fraction`` of the segments were skipped, or all of them."""
        if self.total and (self.skipped > max_fraction * self.total or self.skipped == self.total):
            raise HandEyeError(f"{split}: {self.summary()}, above the allowed fraction {max_fraction:g} "
                               f"(features.max_missing_fraction)")


def segment_frames(root: str | Path, segments: Sequence[Segment], k: int, short_side: int | None = None,
                   missing: MissingReport | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(i, frames)`` for each readable ``segments[i]``: uint8 (K, H, W, 3).

    Each video is opened once, so segments come grouped by video (in order of first appearance). Frames
    come from ``PXX/rgb_frames/VIDEO.tar`` when it exists, else from ``PXX/videos/VIDEO.MP4`` by timestamp.
    short_side: resize so that the shorter side has this many pixels (None keeps the size); done while
    decoding, so that a long 1080p video never sits in memory at full size. Unreadable segments are skipped
    and counted in ``missing``.
    """
    if k < 1:
        raise HandEyeError(f"frames per segment must be >= 1, got {k}")
    missing = missing if missing is not None else MissingReport()
    missing.total += len(segments)
    by_video: dict[str, list[int]] = {}
    for i, seg in enumerate(segments):
        by_video.setdefault(seg.video_id, []).append(i)
    for video_id, idx in by_video.items():
        segs = [segments[i] for i in idx]
        participant = video_id.split("_")[0]
        tar = Path(root) / participant / "rgb_frames" / f"{video_id}.tar"
        videos = [Path(root) / participant / "videos" / f"{video_id}{ext}" for ext in (".MP4", ".mp4")]
        video = next((p for p in videos if p.is_file()), None)
        if tar.is_file():
            yield from _tar_segments(tar, segs, idx, k, short_side, missing)
        elif video is not None:
            yield from _video_segments(video, segs, idx, k, short_side, missing)
        else:
            for _ in segs:
                missing.add("video missing", f"{tar} or {videos[0]}")


def _tar_segments(tar_path: Path, segs: list[Segment], idx: list[int], k: int, short_side: int | None,
                  missing: MissingReport) -> Iterator[tuple[int, np.ndarray]]:
    from PIL import Image

    with contextlib.ExitStack() as stack:
        try:
            tar = stack.enter_context(tarfile.open(tar_path))
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
        except (tarfile.TarError, OSError) as e:
            for _ in segs:
                missing.add("unreadable frame tar", f"{tar_path} ({e})")
            return
        for i, seg in zip(idx, segs, strict=True):
            names = [f"frame_{n:010d}.jpg" for n in seg.frame_numbers(k)]
            absent = [n for n in names if n not in members]
            if absent:
                missing.add("frames missing", f"{tar_path}:{absent[0]}")
                continue
            try:
                frames = [Image.open(io.BytesIO(tar.extractfile(members[n]).read())).convert("RGB")
                          for n in names]
            except (OSError, tarfile.TarError) as e:
                missing.add("unreadable frames", f"{tar_path}:{seg.narration_id} ({e})")
                continue
            if short_side is not None:
                frames = [f.resize(short_side_size(f.width, f.height, short_side), Image.Resampling.BOX)
                          if min(f.size) > short_side else f for f in frames]
            yield i, np.stack([np.asarray(f) for f in frames])


def _video_segments(path: Path, segs: list[Segment], idx: list[int], k: int, short_side: int | None,
                    missing: MissingReport) -> Iterator[tuple[int, np.ndarray]]:
    from handeye.data import video

    try:
        info = video.probe(path)
    except HandEyeError as e:
        for _ in segs:
            missing.add("unreadable video", str(e))
        return
    wanted = {i: [info.index_at(t) for t in seg.timestamps(k)] for i, seg in zip(idx, segs, strict=True)}
    readable = {i: ix for i, ix in wanted.items() if max(ix) < info.num_frames}
    for i in (i for i in idx if i not in readable):
        missing.add("past the end of the video", f"{path} at {max(wanted[i]) / info.fps:.2f}s")
    size = None
    if short_side is not None and min(info.width, info.height) > short_side:
        size = short_side_size(info.width, info.height, short_side)
    try:
        decoded = dict(video.read_frames(path, sorted({n for ix in readable.values() for n in ix}), size))
    except HandEyeError as e:
        for _ in readable:
            missing.add("unreadable video", str(e))
        return
    for i in idx:
        if i in readable:
            yield i, np.stack([decoded[n] for n in readable[i]])


def short_side_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) scaled so that the shorter side is ``short_side``."""
    scale = short_side / min(width, height)
    return max(short_side, round(width * scale)), max(short_side, round(height * scale))


# ------------------------------------------------------------------------------- synthetic layout (tests)

CSV_HEADER = ("narration_id", "participant_id", "video_id", "narration_timestamp", "start_timestamp",
              "stop_timestamp", "start_frame", "stop_frame", "narration", "verb", "verb_class", "noun",
              "noun_class", "all_nouns", "all_noun_classes")


def write_synthetic_layout(root: str | Path, videos: Sequence[str] = ("P01_01", "P02_01"),
                           segments_per_video: int = 8, num_verbs: int = 3, num_nouns: int = 4,
                           span: int = 6, size: tuple[int, int] = (40, 56), source: str = "tar",
                           fps: float = 30.0, seed: int = 0) -> Path:
    """A small EPIC-KITCHENS-100 layout with the real CSV schema, for tests and benchmarks.

    Each segment covers ``span`` frames whose pixels show its classes: the background hue is the noun, a
    bright bar's height the verb, plus noise. Even segments go to train, odd ones to validation.
    source: "tar" (rgb_frames/VIDEO.tar of frame_%010d.jpg) or "video" (videos/VIDEO.MP4, H.264).
    size: (height, width). Returns ``root``.
    """
    from PIL import Image

    root = Path(root)
    ann = root / "annotations"
    ann.mkdir(parents=True, exist_ok=True)
    for path, prefix, n in ((ann / VERB_CLASSES, "verb", num_verbs), (ann / NOUN_CLASSES, "noun", num_nouns)):
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "key", "instances", "category"])
            w.writerows([i, f"{prefix}{i}", f"['{prefix}{i}']", "synthetic"] for i in range(n))
    rng = np.random.default_rng(seed)
    rows: dict[str, list[list]] = {"train": [], "validation": []}
    for video_id in videos:
        participant = video_id.split("_")[0]
        frames = []
        for j in range(segments_per_video):
            verb, noun = int(rng.integers(num_verbs)), int(rng.integers(num_nouns))
            first = 1 + j * span
            rows["train" if j % 2 == 0 else "validation"].append([
                f"{video_id}_{j}", participant, video_id, _hms((first - 1) / fps, 3), _hms((first - 1) / fps),
                _hms((first - 1 + span) / fps), first, first + span - 1, f"verb{verb} noun{noun}",
                f"verb{verb}", verb, f"noun{noun}", noun, f"['noun{noun}']", f"[{noun}]"])
            frames += [_synthetic_frame(verb, noun, num_verbs, num_nouns, size, rng) for _ in range(span)]
        if source == "tar":
            out = root / participant / "rgb_frames" / f"{video_id}.tar"
            out.parent.mkdir(parents=True, exist_ok=True)
            with tarfile.open(out, "w") as tar:
                for n, frame in enumerate(frames, start=1):
                    buf = io.BytesIO()
                    Image.fromarray(frame).save(buf, format="JPEG", quality=95)
                    info = tarfile.TarInfo(f"./frame_{n:010d}.jpg")
                    info.size = buf.tell()
                    buf.seek(0)
                    tar.addfile(info, buf)
        elif source == "video":
            _write_h264(root / participant / "videos" / f"{video_id}.MP4", frames, fps)
        else:
            raise ValueError(f"source must be 'tar' or 'video', got {source!r}")
    for split, data in rows.items():
        with open(ann / SPLIT_FILES[split], "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(CSV_HEADER)
            w.writerows(data)
    return root


def _synthetic_frame(verb: int, noun: int, num_verbs: int, num_nouns: int, size: tuple[int, int],
                     rng: np.random.Generator) -> np.ndarray:
    import colorsys

    h, w = size
    rgb = np.array(colorsys.hsv_to_rgb(noun / num_nouns, 0.8, 0.7)) * 255
    frame = np.broadcast_to(rgb, (h, w, 3)).copy()
    top = int(verb * h / num_verbs)
    frame[top:top + max(1, h // num_verbs), w // 4: 3 * w // 4] = 250
    frame += rng.normal(0, 12, frame.shape)
    return np.clip(frame, 0, 255).astype(np.uint8)


def _write_h264(path: Path, frames: list[np.ndarray], fps: float) -> None:
    import fractions

    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fractions.Fraction(fps).limit_denominator(1001))
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "12"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def _hms(seconds: float, decimals: int = 2) -> str:
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{int(h):02d}:{int(m):02d}:{s:0{3 + decimals}.{decimals}f}"
