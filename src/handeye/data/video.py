"""Frame-exact decoding: the frames returned are exactly the 0-based indices asked for, on H.264 and H.265.

decord 0.6.0 returns wrong frames when it *seeks* in H.265 (FIELD_NOTES: frame i+4 for most indices), while
its seeking on H.264 is exact and sequential decoding is correct everywhere. So ``read_frames`` picks the
backend from the stream's codec and the request: decord's random access only for codecs in
``SEEK_EXACT_CODECS`` and requests sparse enough for seeking to skip whole keyframe intervals, one
sequential PyAV pass otherwise (every frame is decoded, only the requested ones are converted and scaled).
Frame index ``i`` is the ``i``-th frame in presentation order, the numbering both backends agree on
(tests/test_video.py checks it with videos whose pixels encode their own index).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from handeye.errors import HandEyeError

# Codecs on which decord 0.6.0's seeking returned exactly the requested frames (FIELD_NOTES, tests).
SEEK_EXACT_CODECS = frozenset({"h264"})
# swscale's area filter averages every source pixel under a target pixel: right for large downscales.
_INTERPOLATION = "AREA"
# A seek restarts decoding at a keyframe and refills the decoder's frame-thread pipeline; decord also converts
# every frame to full-size RGB (its own scaling is broken, so we rescale after). At one request per half
# keyframe interval decord was slower than one PyAV pass over every frame (benchmarks/bench_frames.py), so it
# is used from this many keyframe intervals per requested frame, where seeking skips whole intervals.
SEEK_MIN_GOPS = 2
_GOP_PACKETS = 600  # packets read to estimate the keyframe interval: a few intervals of a typical camera
_DECORD_BATCH = 32  # frames per decord get_batch call: bounds memory on long videos
# swscale threads per conversion. Its default (0: one per core) builds a thread pool in every fresh context,
# i.e. for every frame, which costs more than scaling a small output (several ms a frame on busy cores).
# One thread is also the same bytes on any core count.
_SWS_THREADS = 1


def decoder_threads() -> int:
    """Decoder threads: one per usable core. FFmpeg's automatic count (cores + 1) decoded the benchmark's
    960x540 clips 10-20% slower on 2 cores (PyAV and decord alike); threaded decoding is bit-exact."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class VideoError(HandEyeError):
    """One video cannot be used (corrupt, empty, undecodable); a corpus stage warns and goes on."""


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    codec: str  # FFmpeg decoder name of the first video stream: h264, hevc, vp9, ...
    fps: float  # average frame rate
    num_frames: int  # frames in the stream: from the container header, else estimated from the duration
    width: int
    height: int
    duration: float  # seconds

    def index_at(self, t: float) -> int:
        """0-based index of the frame shown at time ``t`` seconds (constant frame rate)."""
        return math.floor(t * self.fps + 1e-6)


def probe(path: str | Path) -> VideoInfo:
    """Read the header of the first video stream; ``VideoError`` if there is none or it cannot be decoded."""
    import av

    path = Path(path)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"{path}: no video stream (FFmpeg drops the track of a zero-frame mp4)")
            s = container.streams.video[0]
            ctx = s.codec_context
            if ctx is None or not ctx.name or ctx.name == "none":
                raise VideoError(f"{path}: unsupported codec (FFmpeg has no decoder for its video stream)")
            fps = float(s.average_rate or s.guessed_rate or 0)
            if fps <= 0:
                raise VideoError(f"{path}: no frame rate in the header")
            if s.duration is not None and s.time_base is not None:
                duration = float(s.duration * s.time_base)
            elif container.duration is not None:
                duration = container.duration / 1_000_000
            else:
                duration = 0.0
            num_frames = int(s.frames) or round(duration * fps)
            if num_frames <= 0:
                raise VideoError(f"{path}: zero frames")
            return VideoInfo(path, ctx.name, fps, num_frames, int(ctx.width), int(ctx.height), duration)
    except VideoError:
        raise
    except (av.FFmpegError, OSError, ValueError) as e:
        raise VideoError(f"{path}: cannot open as a video ({_reason(e)})") from None


def read_frames(path: str | Path, indices: Sequence[int], size: tuple[int, int] | None = None,
                backend: str = "auto") -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(index, frame)`` for each distinct requested index, ascending; ``frame``: uint8 (H, W, 3) RGB.

    size: (width, height) to scale to while decoding, or None for the native size.
    backend: "auto" (decord for sparse requests where its seeking is exact, else PyAV), "decord", "pyav".
    Raises ``VideoError`` when a requested frame is past the end or the stream is corrupt.
    """
    wanted = sorted({int(i) for i in indices})
    if not wanted:
        return
    if wanted[0] < 0:
        raise VideoError(f"{path}: negative frame index {wanted[0]}")
    if backend == "auto":
        backend = choose_backend(path, probe(path).codec, wanted)
    if backend == "decord":
        yield from _read_decord(Path(path), wanted, size)
    elif backend == "pyav":
        yield from _read_pyav(Path(path), wanted, size)
    else:
        raise ValueError(f"unknown backend {backend!r}")


def choose_backend(path: str | Path, codec: str, wanted: Sequence[int]) -> str:
    """"decord" where seeking is exact and skips whole keyframe intervals, else "pyav".

    wanted: sorted frame indices. A sequential pass decodes (last + 1) / len(wanted) frames per requested
    frame; seeking pays when that is at least ``SEEK_MIN_GOPS`` keyframe intervals.
    """
    if codec not in SEEK_EXACT_CODECS:
        return "pyav"
    per_request = (wanted[-1] + 1) / len(wanted)
    if per_request < SEEK_MIN_GOPS * 2:  # no stream has keyframes closer than every 2nd frame
        return "pyav"
    return "decord" if per_request >= SEEK_MIN_GOPS * keyframe_interval(path) else "pyav"


def keyframe_interval(path: str | Path) -> float:
    """Median distance between keyframes among the first ``_GOP_PACKETS`` packets of the first video stream
    (demuxed, not decoded); the number of packets read when fewer than two keyframes are among them."""
    import av

    keys, n = [], 0
    try:
        with av.open(str(path)) as container:
            packets = (p for p in container.demux(container.streams.video[0]) if p.size)  # not the EOF one
            for n, packet in enumerate(packets, 1):
                if packet.is_keyframe:
                    keys.append(n)
                if n >= _GOP_PACKETS or len(keys) > 4:
                    break
    except (av.FFmpegError, OSError, IndexError) as e:
        raise VideoError(f"{path}: cannot read its packets ({_reason(e)})") from None
    return float(np.median(np.diff(keys))) if len(keys) > 1 else float(max(n, 1))


def _read_pyav(path: Path, wanted: list[int], size: tuple[int, int] | None,
               ) -> Iterator[tuple[int, np.ndarray]]:
    import av

    width, height = size or (None, None)
    pos = 0  # next entry of `wanted`
    decoded = 0  # frames decoded so far = index of the next frame
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            # frame threads as well as slice threads: x264's single-slice H.264 otherwise decodes on one
            # core. FFmpeg's threaded decoding is bit-exact and keeps the output order.
            stream.thread_type = "AUTO"
            stream.codec_context.thread_count = decoder_threads()
            for frame in container.decode(stream):
                if decoded == wanted[pos]:
                    rgb = frame.reformat(width=width, height=height, format="rgb24",
                                         interpolation=_INTERPOLATION, threads=_SWS_THREADS)
                    yield decoded, rgb.to_ndarray()
                    pos += 1
                    if pos == len(wanted):
                        return
                decoded += 1
    except av.FFmpegError as e:
        raise VideoError(f"{path}: corrupt stream at frame {decoded} ({_reason(e)})") from None
    raise VideoError(f"{path}: frame {wanted[pos]} requested but the video has {decoded} frames")


def _read_decord(path: Path, wanted: list[int], size: tuple[int, int] | None,
                 ) -> Iterator[tuple[int, np.ndarray]]:
    import decord

    try:
        # decord's own width/height scaling is broken for some sizes (buffer size mismatch), so scale here.
        reader = decord.VideoReader(str(path), num_threads=decoder_threads())
    except decord.DECORDError as e:
        raise VideoError(f"{path}: cannot open as a video ({_reason(e)})") from None
    n = len(reader)
    if wanted[-1] >= n:
        raise VideoError(f"{path}: frame {wanted[-1]} requested but the video has {n} frames")
    for start in range(0, len(wanted), _DECORD_BATCH):
        chunk = wanted[start:start + _DECORD_BATCH]
        try:
            frames = reader.get_batch(chunk).asnumpy()
        except decord.DECORDError as e:
            raise VideoError(f"{path}: corrupt stream near frame {chunk[0]} ({_reason(e)})") from None
        for index, frame in zip(chunk, frames, strict=True):
            yield index, frame if size is None else scale(frame, size)


def scale(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 (H, W, 3) -> (height, width, 3) with the same swscale filter as the PyAV path."""
    import av

    if rgb.shape[1::-1] == tuple(size):
        return rgb
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    return frame.reformat(width=size[0], height=size[1], interpolation=_INTERPOLATION,
                          threads=_SWS_THREADS).to_ndarray()


def _reason(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:160] if text else type(e).__name__
