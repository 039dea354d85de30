"""``handeye extract-frames INPUT --out DIR``: frames of a video corpus as training shards (or plain images).

INPUT is any of: a folder of videos (sidecar ``<clip>.json`` files are ignored); a folder of WebDataset tar
shards holding ``*.mp4`` + ``*.json`` (the Ego10K layout); a folder of images (one frame each: the ImageNet
stand-in, so that pretraining only ever reads shards); or an EPIC-KITCHENS layout
(``annotations/EPIC_100_*.csv`` beside ``PXX/videos/PXX_YY.MP4`` or ``PXX/rgb_frames/PXX_YY.tar``), sampled
inside the annotated segments.

Output (the shard formats FrameDataset reads; it tells them apart by what shards/ holds):
  DIR/shards/000000.npy ...  format npy: np.save of uint8 (n, H, W, 3). Chosen for training throughput on
                             corpora that fit the page cache: np.load with mmap_mode="r" gives zero-copy random
                             access and no per-step decoding; the demo's 64 px frames cost 12 KiB each.
  DIR/shards/000000.tar ...  format wds: WebDataset tar shards of ``<key>.jpg`` members (key: the frame's
                             0-based row in frames.csv, %010d, so keys sort in frame order across shards), with
                             fixed tar headers (same frames, same bytes). For corpora of tens of millions of
                             frames: JPEG stores a 224 px frame in a fraction of its 147 KiB raw size. The
                             shards stream sequentially (webdataset, ``tar``) and frames.csv's byte_offset,
                             byte_size let FrameDataset read one member with one pread, without scanning.
  DIR/frames.csv             shard,offset,video,frame_index,timestamp,sha1 (one row per frame, shard order;
                             offset: index in the shard; sha1: of the pixels a reader gets back); format wds
                             adds byte_offset,byte_size (of the member's data inside the tar)
  DIR/summary.json           per video: frames decoded, kept, dropped by dedup, or the reason it failed
  DIR/timings.json           wall-clock figures (kept apart: they differ on every run)
  DIR/run_manifest.json
With ``format: png|jpg`` the frames go to DIR/<video stem>/frame_%010d.<ext> (0-based source frame index)
and frames.csv has a ``path`` column instead of shard,offset.
DIR is built in a temporary folder beside it and renamed into place: never a half-written DIR.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import hashlib
import io
import math
import os
import sys
import tarfile
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm import tqdm

from handeye import preflight, repro
from handeye.config import PARAMS_FILE, load_config, read_yaml
from handeye.data import epic, video
from handeye.errors import HandEyeError

VIDEO_EXTS = {".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v"}
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
# rgb_frames are numbered at the native rate (FIELD_NOTES); for videos EPIC_100_video_info.csv lacks
EPIC_DEFAULT_FPS = 59.94
CSV_COLUMNS = ("shard", "offset", "video", "frame_index", "timestamp", "sha1")
# appended, so that readers of the npy columns by position or name keep working
WDS_CSV_COLUMNS = (*CSV_COLUMNS, "byte_offset", "byte_size")
IMAGE_CSV_COLUMNS = ("path", "video", "frame_index", "timestamp", "sha1")


@dataclass(frozen=True)
class FramesConfig:
    resolution: int = 64  # output frames are resolution x resolution: short side resized, then centre crop
    fps: float | None = 2.0  # sample this many frames per second of video; null: use every_n instead
    every_n: int | None = None  # keep every N-th source frame (only when fps is null); both null: every frame
    epic_splits: list[str] = field(default_factory=lambda: ["train", "validation"])  # EPIC: splits to sample
    # npy: raw uint8 shards (fastest from the page cache); wds: JPEG tar shards (WebDataset layout, a fraction
    # of the bytes: corpora larger than memory); png/jpg: one image file per frame
    format: Literal["npy", "wds", "png", "jpg"] = "npy"
    shard_size: int = 1024  # frames per shard (.npy or .tar)
    jpg_quality: int = 95  # JPEG quality for formats wds and jpg
    dedup: bool = True  # drop near-duplicate frames by embedding similarity
    dedup_encoder: str = "data/weights/dinov3-standin"  # encoders.load_encoder spec (name, folder or Hub id)
    dedup_threshold: float = 0.95  # drop a frame whose cosine similarity to the last kept frame exceeds this
    dedup_global: bool = False  # also drop frames near any earlier kept frame of the corpus
    dedup_batch: int = 64  # images per encoder forward pass
    threads: int = 1  # torch threads of the dedup encoder (bits depend on it; 1 is fastest on 2 busy cores)
    seed: int = 0  # seeds torch (the encoder is deterministic; this pins kernels)

    def validate(self) -> None:
        if self.resolution < 8:
            raise HandEyeError(f"frames.resolution must be >= 8, got {self.resolution}")
        if self.fps is not None and self.every_n is not None:
            raise HandEyeError("frames.fps and frames.every_n are both set; set one of them to null")
        if self.fps is not None and self.fps <= 0:
            raise HandEyeError(f"frames.fps must be > 0, got {self.fps}")
        if self.every_n is not None and self.every_n < 1:
            raise HandEyeError(f"frames.every_n must be >= 1, got {self.every_n}")
        if self.threads < 1:
            raise HandEyeError(f"frames.threads must be >= 1, got {self.threads}")
        if self.shard_size < 1:
            raise HandEyeError(f"frames.shard_size must be >= 1, got {self.shard_size}")
        if not 1 <= self.jpg_quality <= 100:
            raise HandEyeError(f"frames.jpg_quality must be in [1, 100], got {self.jpg_quality}")
        if not 0.0 < self.dedup_threshold <= 1.0:
            raise HandEyeError(f"frames.dedup_threshold must be in (0, 1], got {self.dedup_threshold}")
        unknown = sorted(set(self.epic_splits) - set(epic.SPLIT_FILES))
        if unknown:
            raise HandEyeError(f"frames.epic_splits: unknown {unknown}; known: {sorted(epic.SPLIT_FILES)}")


# ---------------------------------------------------------------------------------------------- sources
@dataclass(frozen=True)
class Source:
    """One unit of the corpus: a video file, a video inside a tar shard, an EPIC frame tar, or an image."""

    name: str  # path relative to the input root (tar members: "<shard>.tar/<member>"): frames.csv 'video'
    kind: Literal["video", "tar_member", "jpg_tar", "image"]
    path: Path  # the file on disk (for tar members: the tar)
    member: str | None = None  # tar member name for kind tar_member
    segments: tuple[epic.Segment, ...] | None = None  # EPIC: sample only inside these
    fps: float | None = None  # EPIC rgb_frames: frame rate of the numbering

    @property
    def stem(self) -> str:
        return Path(self.member or self.name).stem


@dataclass
class Extracted:
    """The frames one source gave: ``frames`` uint8 (n, R, R, 3) with their indices and timestamps."""

    indices: list[int]
    timestamps: list[float]
    frames: np.ndarray


class Warnings:
    """One-line warnings naming the file, printed as they happen and kept for the summary."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, name: str, reason: str) -> None:
        line = f"{name}: {reason}"
        self.lines.append(line)
        tqdm.write(f"warning: {line}", file=sys.stderr)  # above the progress bar, not through it


def discover(root: Path, cfg: FramesConfig, warn: Warnings) -> list[Source]:
    """Every source under ``root``, in a stable order; files that are none of the kinds are warned about."""
    if not root.is_dir():
        raise HandEyeError(f"input folder {root} not found")
    if (root / "annotations").is_dir() and any((root / "annotations").glob("EPIC_100_*.csv")):
        return discover_epic(root, cfg, warn)
    files = sorted(p for p in root.rglob("*") if p.is_file() and not any(
        part.startswith(".") for part in p.relative_to(root).parts))
    stems = {p.with_suffix("") for p in files if p.suffix.lower() in VIDEO_EXTS}
    sources: list[Source] = []
    for p in files:
        rel, ext = p.relative_to(root).as_posix(), p.suffix.lower()
        if ext in VIDEO_EXTS:
            sources.append(Source(rel, "video", p))
        elif ext in IMAGE_EXTS:
            sources.append(Source(rel, "image", p))
        elif ext == ".tar":
            sources += tar_members(p, rel, warn)
        elif ext == ".json" and p.with_suffix("") in stems:
            continue  # Ego10K-style sidecar of a video
        else:
            warn(rel, "not a video, image or tar shard; skipped")
    return sources


def tar_members(path: Path, rel: str, warn: Warnings) -> list[Source]:
    """The videos inside a WebDataset shard (its .json members are metadata)."""
    try:
        with tarfile.open(path) as tar:
            names = sorted(m.name for m in tar.getmembers() if m.isfile())
    except (tarfile.TarError, OSError, EOFError) as e:
        warn(rel, f"unreadable tar shard ({e}); skipped")
        return []
    videos = [n for n in names if Path(n).suffix.lower() in VIDEO_EXTS]
    if not videos:
        warn(rel, "tar shard holds no video; skipped")
    return [Source(f"{rel}/{n}", "tar_member", path, member=n) for n in videos]


def discover_epic(root: Path, cfg: FramesConfig, warn: Warnings) -> list[Source]:
    """EPIC-KITCHENS: one source per annotated video; its rgb_frames tar is preferred over the MP4 when both
    exist, as in handeye.data.epic (the CSV frame numbers address the tar's JPEGs exactly)."""
    segments: dict[str, list[epic.Segment]] = {}
    for split in cfg.epic_splits:
        csv_path = root / "annotations" / epic.SPLIT_FILES[split]
        if not csv_path.is_file():
            warn(csv_path.relative_to(root).as_posix(), f"annotations of split '{split}' missing; skipped")
            continue
        for seg in epic.load_split(root, split).segments:
            segments.setdefault(seg.video_id, []).append(seg)
    rates = epic_video_fps(root / "annotations" / "EPIC_100_video_info.csv")
    sources = []
    for video_id in sorted(segments):
        participant = video_id.split("_")[0]
        segs = tuple(sorted(segments[video_id], key=lambda s: (s.start_time, s.narration_id)))
        mp4 = [root / participant / "videos" / f"{video_id}{ext}" for ext in (".MP4", ".mp4")]
        tar = root / participant / "rgb_frames" / f"{video_id}.tar"
        found = next((p for p in mp4 if p.is_file()), None)
        if tar.is_file():
            sources.append(Source(tar.relative_to(root).as_posix(), "jpg_tar", tar, segments=segs,
                                  fps=rates.get(video_id, EPIC_DEFAULT_FPS)))
        elif found is not None:
            sources.append(Source(found.relative_to(root).as_posix(), "video", found, segments=segs))
        else:
            warn(f"{participant}/videos/{video_id}.MP4", "annotated video not found (nor its rgb_frames tar)")
    return sources


def epic_video_fps(path: Path) -> dict[str, float]:
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        return {r["video_id"]: float(r["fps"]) for r in csv.DictReader(f)}


# ---------------------------------------------------------------------------------------------- sampling
def sample_indices(num_frames: int, fps: float, cfg: FramesConfig, start: float = 0.0,
                   stop: float | None = None) -> list[int]:
    """Frame indices to extract from [start, stop] seconds (default: the whole video)."""
    first = math.floor(start * fps + 1e-6)
    last = num_frames - 1 if stop is None else min(num_frames - 1, math.floor(stop * fps + 1e-6))
    if last < first:
        return []
    if cfg.fps is None:
        return list(range(first, last + 1, cfg.every_n or 1))
    count = math.floor((last + 1 - first) / fps * cfg.fps - 1e-9) + 1
    return sorted({min(last, first + math.floor(k * fps / cfg.fps + 1e-6)) for k in range(count)})


def resize_crop(frame: np.ndarray, resolution: int) -> np.ndarray:
    """uint8 (H, W, 3) -> (R, R, 3): short side to R, centre crop."""
    h, w = frame.shape[:2]
    frame = video.scale(frame, scaled_size(w, h, resolution))
    return centre_crop(frame, resolution)


def scaled_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """(width, height) with the short side = resolution and the aspect ratio kept."""
    s = resolution / min(width, height)
    return max(resolution, round(width * s)), max(resolution, round(height * s))


def centre_crop(frame: np.ndarray, resolution: int) -> np.ndarray:
    h, w = frame.shape[:2]
    top, left = (h - resolution) // 2, (w - resolution) // 2
    return np.ascontiguousarray(frame[top:top + resolution, left:left + resolution])


# ---------------------------------------------------------------------------------------------- extraction
def extract_source(src: Source, cfg: FramesConfig, warn: Warnings) -> Extracted:
    """All sampled frames of one source; ``video.VideoError`` if the source is unusable."""
    if src.kind == "image":
        return extract_image(src, cfg)
    if src.kind == "jpg_tar":
        return extract_jpg_tar(src, cfg, warn)
    if src.kind == "tar_member":
        with tempfile.TemporaryDirectory(prefix=".handeye-member-") as d:
            local = Path(d) / Path(src.member).name
            try:
                with tarfile.open(src.path) as tar, tar.extractfile(src.member) as f:
                    local.write_bytes(f.read())
            except (tarfile.TarError, OSError, EOFError) as e:
                raise video.VideoError(f"{src.name}: unreadable tar member ({e})") from None
            return extract_video(local, src, cfg, warn)
    return extract_video(src.path, src, cfg, warn)


def extract_video(path: Path, src: Source, cfg: FramesConfig, warn: Warnings) -> Extracted:
    try:
        info = video.probe(path)
    except video.VideoError as e:
        raise video.VideoError(_rename(e, path, src.name)) from None
    if src.segments is None:
        wanted = sample_indices(info.num_frames, info.fps, cfg)
    else:
        wanted = []
        for seg in src.segments:
            end = info.num_frames / info.fps
            if seg.stop_time > end + 1e-6:
                warn(src.name, f"annotation {seg.narration_id} ({seg.start_time:.2f}-{seg.stop_time:.2f} s) "
                               f"is past the end of the video ({end:.2f} s); skipped")
                continue
            wanted += sample_indices(info.num_frames, info.fps, cfg, seg.start_time, seg.stop_time)
        wanted = sorted(set(wanted))
        if not wanted:
            raise video.VideoError(f"{src.name}: no annotated frame inside the video")
    size = scaled_size(info.width, info.height, cfg.resolution)
    indices, frames = [], []
    try:
        backend = video.choose_backend(path, info.codec, wanted)  # "auto" would probe the file a second time
        for index, frame in video.read_frames(path, wanted, size=size, backend=backend):
            indices.append(index)
            frames.append(centre_crop(frame, cfg.resolution))
    except video.VideoError as e:
        raise video.VideoError(_rename(e, path, src.name)) from None
    return Extracted(indices, [round(i / info.fps, 6) for i in indices], np.stack(frames))


def extract_jpg_tar(src: Source, cfg: FramesConfig, warn: Warnings) -> Extracted:
    """EPIC rgb_frames: ``frame_%010d.jpg`` numbered from 1, addressed directly by the annotation frames."""
    from PIL import Image

    fps = src.fps or EPIC_DEFAULT_FPS
    try:
        with tarfile.open(src.path) as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            numbers = sorted(int(n[6:16]) for n in members if n.startswith("frame_") and n.endswith(".jpg"))
            if not numbers:
                raise video.VideoError(f"{src.name}: no frame_%010d.jpg in the tar")
            wanted: set[int] = set()
            for seg in src.segments or ():
                if seg.stop_frame > numbers[-1] or seg.start_frame < 1:
                    warn(src.name, f"annotation {seg.narration_id} (frames {seg.start_frame}-"
                                   f"{seg.stop_frame}) is past the last frame ({numbers[-1]}); skipped")
                    continue
                seg_idx = sample_indices(seg.stop_frame, fps, cfg, (seg.start_frame - 1) / fps,
                                         (seg.stop_frame - 1) / fps)
                wanted.update(seg_idx)
            if not wanted:
                raise video.VideoError(f"{src.name}: no annotated frame inside the tar")
            indices, frames = sorted(wanted), []
            for index in indices:
                name = f"frame_{index + 1:010d}.jpg"
                if name not in members:
                    raise video.VideoError(f"{src.name}: {name} missing from the tar")
                with tar.extractfile(members[name]) as f:
                    img = np.asarray(Image.open(io.BytesIO(f.read())).convert("RGB"))
                frames.append(resize_crop(img, cfg.resolution))
    except (tarfile.TarError, OSError, EOFError) as e:
        raise video.VideoError(f"{src.name}: unreadable frame tar ({e})") from None
    return Extracted(indices, [round(i / fps, 6) for i in indices], np.stack(frames))


def extract_image(src: Source, cfg: FramesConfig) -> Extracted:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(src.path) as im:
            img = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise video.VideoError(f"{src.name}: cannot read as an image ({e})") from None
    if min(img.shape[:2]) < 1:
        raise video.VideoError(f"{src.name}: empty image")
    return Extracted([0], [0.0], resize_crop(img, cfg.resolution)[None])


def _rename(e: Exception, path: Path, name: str) -> str:
    """Error text with the temp/absolute path replaced by the corpus-relative name."""
    return str(e).replace(str(path), name)


# ---------------------------------------------------------------------------------------------- writers
class ShardWriter:
    """Appends frames to fixed-size .npy shards and their rows to frames.csv."""

    def __init__(self, root: Path, shard_size: int):
        self.root, self.shard_size = root, shard_size
        (root / "shards").mkdir(parents=True)
        self.buffer: list[np.ndarray] = []
        self.rows: list[tuple] = []
        self.num_shards = 0

    def add(self, src: Source, index: int, timestamp: float, frame: np.ndarray) -> None:
        self.rows.append((f"{self.num_shards:06d}", len(self.buffer), src.name, index, f"{timestamp:.6f}",
                          hashlib.sha1(frame.tobytes()).hexdigest()))
        self.buffer.append(frame)
        if len(self.buffer) == self.shard_size:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            np.save(self.root / "shards" / f"{self.num_shards:06d}.npy", np.stack(self.buffer))
            self.buffer = []
            self.num_shards += 1

    def close(self) -> None:
        self.flush()
        write_csv(self.root / "frames.csv", CSV_COLUMNS, self.rows)


class TarShardWriter:
    """Appends frames as ``<key>.jpg`` members of fixed-size WebDataset tar shards and their rows to
    frames.csv, with each member's byte offset and size for random access."""

    def __init__(self, root: Path, shard_size: int, quality: int):
        self.root, self.shard_size, self.quality = root, shard_size, quality
        (root / "shards").mkdir(parents=True)
        self.pending: list[tuple[str, bytes, tuple]] = []  # (member name, JPEG bytes, row so far)
        self.rows: list[tuple] = []
        self.num_shards = self.num_frames = 0

    def add(self, src: Source, index: int, timestamp: float, frame: np.ndarray) -> None:
        data = encode_jpeg(frame, self.quality)
        sha1 = hashlib.sha1(decode_jpeg(data).tobytes()).hexdigest()  # of what readers get, as for npy
        row = (f"{self.num_shards:06d}", len(self.pending), src.name, index, f"{timestamp:.6f}", sha1)
        self.pending.append((f"{self.num_frames:010d}.jpg", data, row))
        self.num_frames += 1
        if len(self.pending) == self.shard_size:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            path = self.root / "shards" / f"{self.num_shards:06d}.tar"
            placed = write_tar(path, [(name, data) for name, data, _ in self.pending])
            self.rows += [(*row, *where) for (_, _, row), where in zip(self.pending, placed, strict=True)]
            self.pending = []
            self.num_shards += 1

    def close(self) -> None:
        self.flush()
        write_csv(self.root / "frames.csv", WDS_CSV_COLUMNS, self.rows)


def encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
    """uint8 (H, W, 3) -> JPEG bytes, with the same Pillow settings as format jpg."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def decode_jpeg(data: bytes) -> np.ndarray:
    """JPEG bytes -> uint8 (H, W, 3); PIL's errors (UnidentifiedImageError, OSError) pass through."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        # np.array, not asarray: writable, as torch.from_numpy wants; convert only when needed (one copy less)
        return np.array(im if im.mode == "RGB" else im.convert("RGB"))


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> list[tuple[int, int]]:
    """Write (name, bytes) members in the given order as a ustar archive whose headers hold nothing of the
    machine or the time (mtime 0, root ids, mode 0644), so the same members give the same bytes; returns each
    member's (byte offset of its data, size)."""
    placed = []
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode, info.type = len(data), 0, 0o644, tarfile.REGTYPE
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            header = info.tobuf(tar.format, tar.encoding, tar.errors)
            placed.append((tar.offset + len(header), len(data)))
            tar.addfile(info, io.BytesIO(data))
    return placed


class ImageWriter:
    """Writes DIR/<video stem>/frame_%010d.<ext>; a stem shared by two sources falls back to the full name."""

    def __init__(self, root: Path, ext: str, quality: int, sources: list[Source]):
        self.root, self.ext, self.quality = root, ext, quality
        stems = [s.stem for s in sources]
        self.folder = {s.name: (s.stem if stems.count(s.stem) == 1 else s.name.replace(".", "_"))
                       for s in sources}
        self.rows: list[tuple] = []
        self.num_shards = 0

    def add(self, src: Source, index: int, timestamp: float, frame: np.ndarray) -> None:
        from PIL import Image

        rel = f"{self.folder[src.name]}/frame_{index:010d}.{self.ext}"
        (self.root / rel).parent.mkdir(parents=True, exist_ok=True)
        options = {"quality": self.quality} if self.ext == "jpg" else {}
        Image.fromarray(frame).save(self.root / rel, **options)
        sha1 = hashlib.sha1(frame.tobytes()).hexdigest()
        self.rows.append((rel, src.name, index, f"{timestamp:.6f}", sha1))

    def close(self) -> None:
        write_csv(self.root / "frames.csv", IMAGE_CSV_COLUMNS, self.rows)


def write_csv(path: Path, columns: tuple[str, ...], rows: list[tuple]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(columns)
        w.writerows(rows)


# ---------------------------------------------------------------------------------------------- stage
@dataclass
class FramesResult:
    out: Path
    videos_ok: int
    videos_failed: int
    frames_kept: int
    frames_dropped: int
    seconds: float
    per_video: dict[str, dict] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def summary_line(self) -> str:
        return (f"extract-frames: {self.videos_ok} video(s) ok, {self.videos_failed} failed; "
                f"{self.frames_kept} frames kept, {self.frames_dropped} dropped as near-duplicates "
                f"-> {self.out} (per video: summary.json; {self.seconds:.1f} s)")


def run_frames(cfg: FramesConfig, input_dir: str | Path, out_dir: str | Path, encoder=None,
               progress: bool = True) -> FramesResult:
    """Extract (and dedup) the frames of ``input_dir`` into ``out_dir``; ``encoder`` overrides
    ``cfg.dedup_encoder`` (tests pass a small fake)."""
    cfg.validate()
    started = time.perf_counter()
    root, out = Path(input_dir), Path(out_dir)
    warn = Warnings()
    sources = discover(root, cfg, warn)

    # Loaded at the first source with frames to compare: a folder of images (each its own source) never needs
    # it, and loading the DINOv3 stand-in costs ~6 s (torch's and transformers' imports). Extraction itself
    # draws no random numbers; the seed and thread count are for the encoder, whose bits depend on them.
    @functools.cache
    def dedup_encoder():
        from handeye.data import dedup

        repro.seed_everything(cfg.seed, threads=cfg.threads)
        return encoder if encoder is not None else dedup.load_dedup_encoder(cfg.dedup_encoder)

    corpus = None
    if cfg.dedup and cfg.dedup_global:
        from handeye.data import dedup

        corpus = dedup.CorpusIndex(cfg.dedup_threshold)

    with repro.atomic_dir(out) as tmp:
        writer = make_writer(cfg, tmp, sources)
        per_video: dict[str, dict] = {}
        kept_total = dropped_total = 0
        bar = tqdm(sources, desc="extract-frames", unit="video", disable=not progress, file=sys.stderr)
        for src in bar:
            try:
                ex = extract_source(src, cfg, warn)
            except video.VideoError as e:
                warn(src.name, str(e).removeprefix(f"{src.name}: ") + "; skipped")
                per_video[src.name] = {"status": "failed", "reason": str(e)}
                continue
            keep = dedup_mask(ex.frames, cfg, dedup_encoder, corpus)
            for j in np.flatnonzero(keep):
                writer.add(src, ex.indices[j], ex.timestamps[j], ex.frames[j])
            kept, dropped = int(keep.sum()), int((~keep).sum())
            per_video[src.name] = {"status": "ok", "frames": len(keep), "kept": kept, "dropped": dropped}
            kept_total += kept
            dropped_total += dropped
            bar.set_postfix(kept=kept_total, dropped=dropped_total, refresh=False)  # drawn at the next tick
        ok = sum(v["status"] == "ok" for v in per_video.values())
        if kept_total == 0:
            raise HandEyeError(f"no frames could be extracted from {root} ({len(sources)} source(s), "
                               f"{len(warn.lines)} warning(s)); see the warnings above")
        writer.close()
        seconds = time.perf_counter() - started
        result = FramesResult(out, ok, len(per_video) - ok, kept_total, dropped_total, seconds, per_video,
                              warn.lines)
        summary = {"videos_ok": ok, "videos_failed": result.videos_failed, "frames_kept": kept_total,
                   "frames_dropped": dropped_total, "shards": writer.num_shards, "per_video": per_video,
                   "warnings": warn.lines}
        repro.atomic_write_json(tmp / "summary.json", summary)
        repro.atomic_write_json(tmp / "timings.json", {
            "seconds": round(seconds, 3), "frames_per_s": round((kept_total + dropped_total) / seconds, 2)})
        manifest_cfg = {**dataclasses.asdict(cfg), "input": str(root)}
        repro.write_manifest(tmp, "extract_frames", manifest_cfg, cfg.seed)
    return result


def make_writer(cfg: FramesConfig, root: Path, sources: list[Source]):
    if cfg.format == "npy":
        return ShardWriter(root, cfg.shard_size)
    if cfg.format == "wds":
        return TarShardWriter(root, cfg.shard_size, cfg.jpg_quality)
    return ImageWriter(root, cfg.format, cfg.jpg_quality, sources)


def dedup_mask(frames: np.ndarray, cfg: FramesConfig, get_encoder: Callable[[], Any], corpus) -> np.ndarray:
    """frames: uint8 (n, R, R, 3) of one source -> bool (n,) of the frames to keep; ``get_encoder()``: the
    dedup encoder, called only when there is something to compare."""
    keep = np.ones(len(frames), dtype=bool)
    if cfg.dedup and (corpus is not None or len(frames) > 1):  # an image alone has no duplicate in its video
        from handeye.data import dedup

        emb = dedup.embed_frames(get_encoder(), frames, cfg.dedup_batch)
        keep = dedup.keep_within_video(emb, cfg.dedup_threshold)
        if corpus is not None:
            keep[keep] = corpus.keep_new(emb[keep])
    return keep


# ---------------------------------------------------------------------------------------------- reader
class FrameDataset:
    """torch Dataset over a frame-shard folder: ``ds[i]`` -> uint8 tensor (3, H, W), in frames.csv order.

    Reads npy shards (memory-mapped) or wds tar shards (one member per read, JPEG decoded here, so that
    DataLoader workers share the decoding), whichever shards/ holds. Files are opened on first access in each
    process, so DataLoader workers fork cheaply and never share a file position. ``rows`` is frames.csv as a
    list of dicts (video, frame_index, timestamp, sha1, ...); ``format`` is "npy" or "wds".
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        csv_path, shard_dir = self.root / "frames.csv", self.root / "shards"
        if not csv_path.is_file() or not shard_dir.is_dir():
            raise HandEyeError(f"{self.root} is not a frame-shard folder (no frames.csv or shards/); "
                               f"make one with `handeye extract-frames INPUT --out {self.root}`")
        with open(csv_path, newline="") as f:
            self.rows = list(csv.DictReader(f))
        has_npy, has_tar = any(shard_dir.glob("*.npy")), any(shard_dir.glob("*.tar"))
        if has_npy and has_tar:
            raise HandEyeError(f"{shard_dir} holds both .npy and .tar shards; re-run extract-frames into an "
                               f"empty --out")
        self.format = "wds" if has_tar else "npy"
        self._shards = TarShards(shard_dir, self.rows) if has_tar else NpyShards(shard_dir, self.rows)
        self.resolution: tuple[int, int] = self._shards.resolution

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        import torch

        return torch.from_numpy(self._shards.read(i)).permute(2, 0, 1)


class NpyShards:
    """Frames of np.save shards, each memory-mapped on first access in a process."""

    def __init__(self, shard_dir: Path, rows: list[dict]):
        self.shard_dir = shard_dir
        self.shard_names = sorted(p.stem for p in shard_dir.glob("*.npy"))
        shapes = [self._header(shard_dir / f"{s}.npy") for s in self.shard_names]
        if not shapes or len({s[1:] for s in shapes}) != 1:
            raise HandEyeError(f"{shard_dir}: no shards, or shards of different frame sizes")
        if sum(s[0] for s in shapes) != len(rows):
            raise HandEyeError(f"{shard_dir.parent}: frames.csv has {len(rows)} rows but the shards hold "
                               f"{sum(s[0] for s in shapes)} frames; re-run extract-frames")
        self.resolution: tuple[int, int] = shapes[0][1:3]
        position = {name: i for i, name in enumerate(self.shard_names)}
        self._index = np.array([(position[r["shard"]], int(r["offset"])) for r in rows], dtype=np.int64)
        self._maps: list[np.ndarray] | None = None

    @staticmethod
    def _header(path: Path) -> tuple[int, ...]:
        arr = np.load(path, mmap_mode="r")
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[3] != 3:
            raise HandEyeError(f"{path}: expected uint8 (n, H, W, 3), got {arr.dtype} {arr.shape}")
        return arr.shape

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_maps": None}  # a spawned worker maps the files itself, not a copy of them

    def read(self, i: int) -> np.ndarray:
        """uint8 (H, W, 3) of frame ``i``."""
        if self._maps is None:
            self._maps = [np.load(self.shard_dir / f"{s}.npy", mmap_mode="r") for s in self.shard_names]
        shard, offset = self._index[i]
        return np.array(self._maps[shard][offset])


class TarShards:
    """Frames of WebDataset tar shards: one pread of a member's tar header and JPEG bytes at the offset
    frames.csv records, then a decode. The header is checked, so an offset into the wrong file fails loudly."""

    MAX_OPEN = 64  # open shards per process: paper corpora have tens of thousands of them

    def __init__(self, shard_dir: Path, rows: list[dict]):
        self.paths = sorted(shard_dir.glob("*.tar"))
        if rows and not {"byte_offset", "byte_size"} <= rows[0].keys():
            raise HandEyeError(f"{shard_dir.parent / 'frames.csv'} has no byte_offset,byte_size columns for the "
                               f".tar shards; re-run extract-frames with --format wds")
        position = {p.stem: i for i, p in enumerate(self.paths)}
        missing = sorted({r["shard"] for r in rows} - position.keys())
        if missing:
            raise HandEyeError(f"{shard_dir}: shard {missing[0]}.tar of frames.csv is missing; re-run "
                               f"extract-frames")
        self._index = np.array([(position[r["shard"]], int(r["byte_offset"]), int(r["byte_size"]))
                                for r in rows], dtype=np.int64).reshape(-1, 3)
        self._check_sizes(len(rows))
        self._files: OrderedDict[int, Any] = OrderedDict()
        self._pid: int | None = None
        self.resolution: tuple[int, int] | None = None  # of the first frame; every other must match it
        self.resolution = self.read(0).shape[:2]
        self._files.clear()  # opened again by whichever process reads next

    def _check_sizes(self, num_rows: int) -> None:
        """Every shard holds its last member whole: a truncated copy is caught here, not mid-training."""
        ends = np.zeros(len(self.paths), dtype=np.int64)
        np.maximum.at(ends, self._index[:, 0], self._index[:, 1] + self._index[:, 2])
        if not num_rows or not ends.all():
            raise HandEyeError(f"{self.paths[0].parent}: frames.csv lists "
                               f"{num_rows} frames in {np.count_nonzero(ends)} of {len(self.paths)} .tar shards; "
                               f"re-run extract-frames")
        for path, end in zip(self.paths, ends.tolist(), strict=True):
            size = path.stat().st_size
            if size < end:
                raise HandEyeError(f"{path}: truncated ({size} bytes, frames.csv needs {end}); copy the shard "
                                   f"again or re-run extract-frames")

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_files": OrderedDict(), "_pid": None}

    def _file(self, shard: int):
        if self._pid != os.getpid():  # a forked DataLoader worker: its own handles, not its parent's
            self._files, self._pid = OrderedDict(), os.getpid()
        f = self._files.get(shard)
        if f is None:
            if len(self._files) >= self.MAX_OPEN:
                self._files.popitem(last=False)[1].close()
            # closed on eviction or with the dataset; unbuffered: pread bypasses Python's buffer anyway
            f = self._files[shard] = open(self.paths[shard], "rb", buffering=0)
        self._files.move_to_end(shard)
        return f

    def read(self, i: int) -> np.ndarray:
        """uint8 (H, W, 3) of frame ``i``."""
        from PIL import UnidentifiedImageError

        shard, offset, size = self._index[i].tolist()
        path = self.paths[shard]
        block = tarfile.BLOCKSIZE
        buf = os.pread(self._file(shard).fileno(), block + size, offset - block)
        where = f"{path}: frame {i} (byte {offset})"
        if len(buf) < block + size:
            raise HandEyeError(f"{where}: shard ends early; copy the shard again or re-run extract-frames")
        try:
            info = tarfile.TarInfo.frombuf(buf[:block], "utf-8", "surrogateescape")
        except tarfile.HeaderError:
            info = None
        if info is None or info.size != size or not info.name.endswith(".jpg"):
            raise HandEyeError(f"{where}: no tar member of {size} bytes there (damaged shard, or frames.csv of "
                               f"another run); re-run extract-frames")
        try:
            img = decode_jpeg(buf[block:])
        except (UnidentifiedImageError, OSError) as e:
            raise HandEyeError(f"{where}: member {info.name} does not decode ({e}); re-run extract-frames") from None
        if self.resolution is not None and img.shape[:2] != self.resolution:
            raise HandEyeError(f"{where}: member {info.name} is {img.shape[1]}x{img.shape[0]}, the others "
                               f"{self.resolution[1]}x{self.resolution[0]}; re-run extract-frames")
        return img


# ---------------------------------------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", type=Path, help="folder of videos, tar shards or images; or an EPIC layout")
    p.add_argument("--out", type=Path, required=True, help="output folder (replaced atomically)")
    p.add_argument("--params", type=Path, default=PARAMS_FILE, help="parameter file (section 'frames')")
    p.add_argument("--resolution", type=int, help="output side in pixels")
    p.add_argument("--fps", type=float, help="frames per second of video to sample")
    p.add_argument("--every-n", type=int, help="sample every N-th frame (instead of --fps)")
    p.add_argument("--format", choices=["npy", "wds", "png", "jpg"],
                   help="npy shards, wds (JPEG tar shards), or one image file per frame")
    p.add_argument("--shard-size", type=int, help="frames per shard")
    p.add_argument("--dedup", action=argparse.BooleanOptionalAction, default=None,
                   help="embedding dedup on/off")
    p.add_argument("--dedup-encoder", help="encoder spec for dedup (registry name, folder, Hub id)")
    p.add_argument("--dedup-threshold", type=float, help="cosine similarity above which a frame is dropped")
    p.add_argument("--dedup-global", action=argparse.BooleanOptionalAction, default=None,
                   help="also drop near-duplicates across the corpus")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    names = ("resolution", "fps", "every_n", "format", "shard_size", "dedup", "dedup_encoder",
             "dedup_threshold", "dedup_global")
    cfg = load_config(FramesConfig, "frames", args.params, {n: getattr(args, n) for n in names})
    if args.every_n is not None and args.fps is None:
        cfg = dataclasses.replace(cfg, fps=None)  # --every-n on its own replaces the configured fps
    # The first stage of `dvc repro`: every external input of the whole profile (corpora, DINOv3, the MAE init,
    # EPIC annotations) is checked here, so that a missing one stops the run before anything is decoded.
    params = {**read_yaml(args.params), "frames": dataclasses.asdict(cfg)}
    preflight.check_stage_inputs(args.input, params)
    result = run_frames(cfg, args.input, args.out, progress=not args.no_progress)
    print(result.summary_line())
    return 0
