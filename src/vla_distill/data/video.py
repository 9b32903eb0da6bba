"""MP4 video through PyAV: encode one episode, concatenate episodes without re-encoding, decode by timestamp.

Encoding follows lerobot's defaults (AV1 via libsvtav1, yuv420p, a keyframe every 2 frames, crf 30) so a
random frame costs at most one extra decoded frame.
"""

from __future__ import annotations

import contextlib
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from vla_distill.data.format import TOLERANCE_S, removed_on_failure
from vla_distill.errors import DatasetError

DEFAULT_CODEC = "libsvtav1"
# SVT-AV1 prints a banner per encoder to stderr; keep only its errors.
os.environ.setdefault("SVT_LOG", "1")


def encode_video(frames: np.ndarray, path: Path, fps: int, codec: str = DEFAULT_CODEC, crf: int = 30,
                 gop: int = 2) -> None:
    """frames: (T, H, W, 3) uint8 -> one mp4 whose frame i has pts i/fps. Written atomically."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected (T, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
    path = Path(path)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    options = {"g": str(gop), "crf": str(crf)}
    if codec == "libsvtav1":
        options["preset"] = "12"
        # One thread per encoder: collection already runs one process per core.
        options["svtav1-params"] = "lp=1"
    with removed_on_failure(tmp), own_scheduling(), av.open(str(tmp), "w") as out:
        stream = out.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, fps)
        _encode_all(out, stream, frames)
    os.replace(tmp, path)


@contextlib.contextmanager
def own_scheduling():
    """Keeps the calling thread's scheduling policy. Run as root (a container, a robot's computer), SVT-AV1 moves the
    thread that encodes to SCHED_FIFO priority 99 and leaves it there: a collect worker or a recording control loop
    would then never yield its core to anything else on the machine."""
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        yield
    finally:
        if os.sched_getscheduler(0) != policy:
            os.sched_setscheduler(0, policy, param)


def _encode_all(out: av.container.OutputContainer, stream: av.video.stream.VideoStream, frames: np.ndarray) -> None:
    try:
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    except BaseException:
        with contextlib.suppress(Exception):  # end the stream, or SVT-AV1 prints an error as it is freed
            stream.encode()
        raise


class VideoConcatenator:
    """Appends whole-episode mp4 files into one mp4 by copying packets (no re-encode), like lerobot's
    ffmpeg concat demuxer. Timestamps stay continuous: episode k starts where episode k-1 ended."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._out = av.open(str(self.path), "w", options={"movflags": "faststart"})
        self._stream = None
        self.duration_s = 0.0

    def append(self, src: Path, num_frames: int, fps: int, start_s: float = 0.0) -> tuple[float, float]:
        """Appends the `num_frames` frames of `src` from `start_s` on (a whole file by default; a segment of a
        dataset's video, which starts on a keyframe as every episode does); returns (from_timestamp, to_timestamp)
        of the appended episode inside this file."""
        start = self.duration_s
        try:
            with av.open(str(src)) as inp:
                in_stream = inp.streams.video[0]
                if self._stream is None:
                    self._stream = self._out.add_stream_from_template(in_stream, opaque=True)
                    self._stream.time_base = in_stream.time_base
                tb = in_stream.time_base
                # Half a frame of slack either side: the episodes table stores float seconds.
                lo, hi = (start_s - 0.5 / fps) / tb, (start_s + (num_frames - 0.5) / fps) / tb
                if start_s > 0:
                    inp.seek(max(int(lo), 0), stream=in_stream, backward=True)
                offset = None
                for packet in inp.demux(in_stream):
                    if packet.dts is None or packet.pts < lo:
                        continue
                    if packet.pts > hi:
                        break
                    if offset is None:
                        offset = round(start / tb) - packet.pts
                    packet.pts += offset
                    packet.dts += offset
                    packet.stream = self._stream
                    self._out.mux(packet)
        except av.error.FFmpegError as e:
            raise DatasetError(f"cannot read encoded episode video ({e})", path=src) from None
        self.duration_s = start + num_frames / fps
        return start, self.duration_s

    def close(self) -> None:
        self._out.close()

    def size_mb(self) -> float:
        return self.path.stat().st_size / 1e6 if self.path.exists() else 0.0


class VideoReader:
    """Frame lookup by timestamp in one mp4, keeping the file open between calls."""

    def __init__(self, path: Path, key: str | None = None):
        self.path = Path(path)
        self.key = key
        if not self.path.exists():
            raise DatasetError("video file is missing", path=self.path, field=key)
        try:
            self._container = av.open(str(self.path))
            self._stream = self._container.streams.video[0]
        except (av.error.FFmpegError, IndexError) as e:
            raise DatasetError(f"cannot open video ({e})", path=self.path, field=key) from None
        self._stream.thread_type = "AUTO"
        self._tb = float(self._stream.time_base)

    def _error(self, msg: str) -> DatasetError:
        return DatasetError(msg, path=self.path, field=self.key)

    def frames_at(self, timestamps: np.ndarray, tolerance_s: float = TOLERANCE_S) -> np.ndarray:
        """(N,) seconds -> (N, H, W, 3) uint8, each the frame whose pts is nearest, within tolerance."""
        timestamps = np.asarray(timestamps, dtype=np.float64)
        first, last = float(timestamps.min()), float(timestamps.max())
        try:
            self._container.seek(max(0, int(first / self._tb)), stream=self._stream, backward=True, any_frame=False)
            pts, imgs = [], []
            for frame in self._container.decode(self._stream):
                t = frame.pts * self._tb
                if t < first - tolerance_s:
                    continue
                pts.append(t)
                imgs.append(frame.to_ndarray(format="rgb24"))
                if t >= last - tolerance_s:
                    break
        except av.error.FFmpegError as e:
            raise self._error(f"cannot decode video ({e})") from None
        if not pts:
            raise self._error(f"no frame decoded at t={first:.4f}s")
        pts_arr = np.asarray(pts)
        nearest = np.abs(pts_arr[None, :] - timestamps[:, None]).argmin(axis=1)
        gap = np.abs(pts_arr[nearest] - timestamps)
        if (gap >= tolerance_s).any():
            bad = int(gap.argmax())
            raise self._error(
                f"no frame within {tolerance_s}s of t={timestamps[bad]:.4f}s (nearest decodable: "
                f"{pts_arr[nearest[bad]]:.4f}s; truncated or corrupt file?)"
            )
        return np.stack([imgs[i] for i in nearest])

    def decode_all(self):
        """Yields (pts_seconds, HWC uint8) for every frame in order."""
        try:
            self._container.seek(0, stream=self._stream, backward=True, any_frame=False)
            for frame in self._container.decode(self._stream):
                yield frame.pts * self._tb, frame.to_ndarray(format="rgb24")
        except av.error.FFmpegError as e:
            raise self._error(f"cannot decode video ({e})") from None

    def close(self) -> None:
        self._container.close()
