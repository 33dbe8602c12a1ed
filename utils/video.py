"""Video reading (streaming) and writing through one code path: the ffmpeg binary of imageio-ffmpeg.

Frames are H,W,3 uint8 RGB. Video files of any container ffmpeg decodes (mp4, mov, avi, mkv, webm,
gif, ...) are recognised by content, not by name, so a temporary name like `rgb.mp4.tmp` reads fine;
a folder of jpg/png images (sorted by file name) reads as a video too. Frames are decoded with
`-fps_mode passthrough`, one output frame per decoded frame: ffmpeg's default would duplicate or drop
frames of variable-rate videos (gifs) to reach a constant rate.
"""

import logging
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from types import TracebackType
from typing import NamedTuple

import cv2
import imageio_ffmpeg
import numpy as np

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
# writable formats: name -> ffmpeg muxer
_MUXERS = {"mp4": "mp4", "mov": "mov", "mkv": "matroska", "gif": "gif"}
_PASSTHROUGH = ["-fps_mode", "passthrough"]
# one-pass gif with a palette fitted to the clip (ffmpeg's fixed default palette looks poor)
_GIF_FILTER = "split[a][b];[a]palettegen[p];[b][p]paletteuse"


class VideoInfo(NamedTuple):
    num_frames: int  # the count the container announces (see video_info), which decoding may not reach
    height: int
    width: int
    fps: float | None  # None for a folder of images


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such video file or folder: {path}")
    return path


def image_files(folder: str | Path) -> list[Path]:
    """The jpg/png files of a folder, sorted by name (the frames of a video given as a folder)."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ValueError(f"no {'/'.join(IMAGE_EXTENSIONS)} images in folder {folder}")
    return files


def read_image(path: str | Path) -> np.ndarray:
    """An image file as H,W,3 uint8 RGB, decoded by cv2 as in the official scripts (JPEG decoders differ
    by a grey level here and there, which moves published numbers)."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"image not found: {path}")
        raise ValueError(f"cannot read image {path}")
    return np.ascontiguousarray(bgr[..., ::-1])  # H,W,3


def _read_image(path: Path, shape: tuple[int, ...] | None) -> np.ndarray:
    frame = read_image(path)  # H,W,3
    if shape is not None and frame.shape != shape:
        raise ValueError(f"image {path} has shape {frame.shape}, unlike the first image {shape}")
    return frame


def _ffmpeg_error(path: Path, err: Exception) -> ValueError:
    lines = [line for line in str(err).splitlines() if line.strip()]
    reason = lines[-1] if lines else type(err).__name__
    return ValueError(f"cannot read video {path}: {reason}")


def _open_ffmpeg(path: Path) -> tuple[Iterator[bytes], int, int, float]:
    """Start decoding; returns the raw-frame generator, H, W and the nominal fps."""
    frames = imageio_ffmpeg.read_frames(str(path), output_params=_PASSTHROUGH)
    try:
        meta = next(frames)
    except (OSError, RuntimeError, IndexError, StopIteration) as err:
        frames.close()
        raise _ffmpeg_error(path, err) from err
    width, height = meta["size"]
    return frames, height, width, float(meta["fps"])


def _announced_frames(path: Path) -> int:
    """The frame count in the container's header (0 where it has none), read without decoding."""
    capture = cv2.VideoCapture(str(path))
    try:
        return max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0) if capture.isOpened() else 0
    finally:
        capture.release()


def video_info(path: str | Path) -> VideoInfo:
    """Frame count, size and fps without decoding the video: the count is the one the container announces
    (a truncated file may decode fewer frames; readers confirm it as they go). A container without a count
    is decoded once to count. A folder counts its images."""
    path = _existing(path)
    if path.is_dir():
        files = image_files(path)
        height, width, _ = _read_image(files[0], None).shape
        return VideoInfo(len(files), height, width, None)
    frames, height, width, fps = _open_ffmpeg(path)
    frames.close()
    num_frames = _announced_frames(path)
    if num_frames == 0:
        try:
            num_frames, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
        except RuntimeError as err:
            raise _ffmpeg_error(path, err) from err
    if num_frames == 0:
        raise ValueError(f"video {path} has no frames")
    return VideoInfo(num_frames, height, width, fps)


def _check_range(start: int, max_frames: int | None, stride: int) -> None:
    if start < 0 or stride < 1 or (max_frames is not None and max_frames < 0):
        raise ValueError(
            f"need start >= 0, stride >= 1, max_frames >= 0; got {start}, {stride}, {max_frames}"
        )


def _stream_folder(
    files: list[Path], start: int, max_frames: int | None, stride: int
) -> Iterator[np.ndarray]:
    shape = None
    for file in islice(files, start, None if max_frames is None else start + max_frames * stride, stride):
        frame = _read_image(file, shape)  # H,W,3
        shape = frame.shape
        yield frame


def _stream_file(path: Path, start: int, max_frames: int | None, stride: int) -> Iterator[np.ndarray]:
    if max_frames == 0:
        return
    frames, height, width, _ = _open_ffmpeg(path)
    decoded = yielded = 0
    try:
        for raw in frames:
            index, decoded = decoded, decoded + 1
            if index < start or (index - start) % stride:
                continue
            yield np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3).copy()  # H,W,3
            yielded += 1
            if yielded == max_frames:
                break
    except (OSError, RuntimeError) as err:
        raise _ffmpeg_error(path, err) from err
    finally:
        frames.close()
    if decoded == 0:
        raise ValueError(f"video {path} has no frames")


def read_video(
    path: str | Path, start: int = 0, max_frames: int | None = None, stride: int = 1
) -> Iterator[np.ndarray]:
    """Yield frames start, start+stride, ... (at most max_frames) one at a time, H,W,3 uint8 RGB.

    A missing path raises FileNotFoundError now; an unreadable video raises ValueError when the
    first frame is requested. Frames before `start` are decoded and dropped (exact, no seeking).
    """
    _check_range(start, max_frames, stride)
    path = _existing(path)
    if path.is_dir():
        return _stream_folder(image_files(path), start, max_frames, stride)
    return _stream_file(path, start, max_frames, stride)


def read_frames(
    path: str | Path, start: int = 0, max_frames: int | None = None, stride: int = 1
) -> np.ndarray:
    """The selected frames of a short video as one T,H,W,3 uint8 array (see read_video)."""
    frames = list(read_video(path, start, max_frames, stride))
    if not frames:
        raise ValueError(f"no frames selected from {path} (start={start}, max_frames={max_frames})")
    return np.stack(frames)  # T,H,W,3


class VideoWriter:
    """Streaming writer: H.264 (yuv420p) in mp4/mov/mkv, or a looping gif.

    H.264 with yuv420p needs an even height and width; frames are never resized, so odd sizes raise
    ValueError (gifs take any size). Use: `with VideoWriter("out.mp4") as writer: writer.write(frame)`.

    Args:
        path: the file to write.
        fps: frames per second.
        crf: the constant quality of H.264 (lower is better).
        format: 'mp4', 'mov', 'mkv' or 'gif'; default the file extension, so that one can write to a
            temporary name and rename it.
    """

    def __init__(self, path: str | Path, fps: float = 24, crf: int = 20, format: str | None = None) -> None:
        self.path = Path(path)
        self.format = (format or self.path.suffix.lstrip(".")).lower()
        if self.format not in _MUXERS:
            raise ValueError(
                f"cannot write {self.path}: format {self.format!r} is not one of {sorted(_MUXERS)}"
            )
        if not self.path.parent.is_dir():
            raise FileNotFoundError(f"no such folder to write {self.path} into: {self.path.parent}")
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.fps = fps
        self.crf = crf
        self.num_frames = 0
        self._shape: tuple[int, ...] | None = None
        self._process: subprocess.Popen | None = None
        self._log = tempfile.TemporaryFile()

    def _command(self, height: int, width: int) -> list[str]:
        if self.format == "gif":
            encode = ["-vf", _GIF_FILTER, "-loop", "0"]
        else:
            encode = ["-c:v", "libx264", "-crf", str(self.crf), "-pix_fmt", "yuv420p"]
            if self.format in ("mp4", "mov"):
                # The index goes first, so that players start at once and a cut-off copy still opens.
                encode += ["-movflags", "+faststart"]
        return [
            imageio_ffmpeg.get_ffmpeg_exe(),
            *("-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24"),
            *("-s", f"{width}x{height}", "-framerate", str(self.fps), "-i", "pipe:0"),
            *encode,
            *("-f", _MUXERS[self.format], str(self.path)),
        ]

    def _start(self, shape: tuple[int, ...]) -> None:
        height, width, _ = shape
        if self.format != "gif" and (height % 2 or width % 2):
            raise ValueError(f"H.264 needs an even frame size; got {height}x{width} for {self.path}")
        self._shape = shape
        # a session of its own: a terminal's Ctrl-C reaches the whole foreground group, and ffmpeg would
        # quit and leave the file unfinished; here it ends when the caller closes the writer
        self._process = subprocess.Popen(
            self._command(height, width),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            start_new_session=True,
        )

    def _ffmpeg_log(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace").strip()

    def write(self, frame: np.ndarray) -> None:
        """Append one H,W,3 uint8 RGB frame; all frames must have the first frame's size."""
        if self._log.closed:
            raise ValueError(f"writer of {self.path} is closed")
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"frames must be H,W,3 uint8, got {frame.shape} {frame.dtype} for {self.path}")
        if self._process is None:
            self._start(frame.shape)
        elif frame.shape != self._shape:
            raise ValueError(
                f"frame of shape {frame.shape} differs from the first {self._shape} in {self.path}"
            )
        try:
            self._process.stdin.write(np.ascontiguousarray(frame).tobytes())
        except BrokenPipeError as err:
            self._process.wait()
            raise OSError(f"ffmpeg stopped while writing {self.path}: {self._ffmpeg_log()}") from err
        self.num_frames += 1

    def close(self) -> None:
        """Finish the file; raises ValueError if no frame was written, OSError if ffmpeg failed."""
        if self._log.closed:
            return
        process, self._process = self._process, None
        try:
            if process is None:
                raise ValueError(f"no frames were written to {self.path}")
            try:
                process.stdin.close()
            except BrokenPipeError:
                pass  # ffmpeg already quit; its exit status below says why
            if process.wait() != 0:
                raise OSError(f"ffmpeg failed writing {self.path}: {self._ffmpeg_log()}")
        finally:
            self._log.close()

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
            return
        try:
            self.close()
        except (OSError, ValueError):
            logger.warning("could not finish %s after an error", self.path)


def write_video(
    path: str | Path, frames: Iterable[np.ndarray], fps: float = 24, crf: int = 20, format: str | None = None
) -> int:
    """Write H,W,3 uint8 frames (an array T,H,W,3 or any iterable) with VideoWriter; returns the count."""
    with VideoWriter(path, fps=fps, crf=crf, format=format) as writer:
        for frame in frames:
            writer.write(frame)
    return writer.num_frames


def write_gif(path: str | Path, frames: Iterable[np.ndarray], fps: float = 8) -> int:
    """Write a looping gif with a palette fitted to the frames (any size); returns the frame count.
    Gif delays are whole centiseconds, so the fps is rounded accordingly."""
    return write_video(path, frames, fps=fps, format="gif")
