"""Frame sources: every way a video reaches the tracker, behind one protocol (nets.tracker.FrameSource).

A source holds a video of `num_frames` frames of height x width, RGB in the layout of every reader (H,W,3
uint8), and hands out windows [start, end) at the model's resolution `image_size` on a device, as
1,T,3,H',W' float (frames_to_rgbs: the one permute). Two resize rules exist because the official protocols
differ: "bilinear" (torch, align_corners=False, on float frames: the demo, the API and TAP-Vid) and "cv2"
(cv2.resize INTER_LINEAR on uint8 frames: PointOdyssey and CroHD).

    open_frames(video, image_size, device)   # a T,H,W,3 array or tensor, a video file, a folder, image paths

Each frame is read from its storage once per pass. A video file is decoded forward, once: the frames of the
current window are held in memory, and with `cache=True` (for tracking backward from frames after 0) every
decoded frame is also written to a temporary file, from which earlier frames are read back. Memory stays
flat whatever the video's length (the frames of two windows at most); the cache takes T*H*W*3 bytes of
temporary disk.
"""

import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from nets.pips2 import frames_to_rgbs
from utils.config import UsageError
from utils.video import image_files, read_image, read_video, video_info

logger = logging.getLogger(__name__)

RESIZE_RULES = ("bilinear", "cv2")
Video = np.ndarray | torch.Tensor | str | Path | Sequence[str | Path]


def resize_frames(rgbs: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """B,T,3,H,W float -> B,T,3,H',W' bilinear (align_corners=False, the official TAP-Vid and demo resize);
    frames already of that size are returned as they are."""
    B, T, C, H, W = rgbs.shape
    if (H, W) == tuple(size):
        return rgbs
    resized = F.interpolate(rgbs.flatten(0, 1), size=tuple(size), mode="bilinear", align_corners=False)
    return resized.reshape(B, T, C, *size)  # B,T,3,H',W'


MIN_SIDE = 64  # the model's coarsest correlation level needs 8 feature pixels a side


def check_size(
    size: Sequence[int], name: str = "image_size", multiple: int = 1, least: int = 1
) -> tuple[int, int]:
    """(H, W) as two integers of at least `least`, multiples of `multiple`, or ValueError naming `name`."""
    pair = tuple(size) if isinstance(size, (tuple, list)) else ()
    if len(pair) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in pair):
        raise ValueError(f"{name} must be two positive integers H,W, got {size!r}")
    if pair[0] % multiple or pair[1] % multiple:
        raise ValueError(f"{name} sides must be positive multiples of {multiple}, got {pair[0]}x{pair[1]}")
    if min(pair) < least:
        raise ValueError(f"{name} sides must be at least {least} pixels, got {pair[0]}x{pair[1]}")
    return pair


def require_size(
    size: Sequence[int] | None, name: str = "image_size", multiple: int = 1, least: int = 1
) -> None:
    """check_size for a script config's flag: UsageError `--<name> ...`; None (a size chosen later) passes."""
    if size is None:
        return
    try:
        check_size(size, name, multiple, least)
    except ValueError as err:
        raise UsageError(f"--{err}") from None


class Frames:
    """The frame-source base: `get` reads frames with the subclass's `_read` and brings them to the model.

    Attributes:
        num_frames, height, width: the video's length and frame size (its pixels are the API's pixels).
        frames_read: frames taken from storage so far (decoded, or image files read).
        read_seconds: time spent in `get` (reading, resizing and moving to the device).
        cache: set before the first read when windows will be read again backward; only a video file,
            which decodes forward, needs it (see VideoFileFrames).
    """

    def __init__(
        self,
        name: str,
        num_frames: int,
        height: int,
        width: int,
        image_size: Sequence[int] | None = None,
        device: torch.device | str = "cpu",
        resize: str = "bilinear",
    ) -> None:
        if resize not in RESIZE_RULES:
            raise ValueError(f"resize must be one of {RESIZE_RULES}, got {resize!r}")
        self.name = name
        self.num_frames, self.height, self.width = num_frames, height, width
        self.image_size = (height, width) if image_size is None else check_size(image_size)
        self.device = torch.device(device)
        self.resize = resize
        self.frames_read = 0
        self.read_seconds = 0.0
        self.cache = False

    def _read(self, start: int, end: int) -> np.ndarray | torch.Tensor:
        """Frames [start, end) as T,H,W,3 uint8 (fewer only where a video ends early)."""
        raise NotImplementedError

    def get(self, start: int, end: int) -> torch.Tensor:
        """Frames [start, end) as 1,T,3,H',W' float RGB 0..255 at image_size on the device."""
        if not 0 <= start < end <= self.num_frames:
            raise ValueError(f"frames [{start}, {end}) are not among the {self.num_frames} of {self.name}")
        began = time.perf_counter()
        frames = self._read(start, end)  # T,H,W,3
        H, W = self.image_size
        if len(frames) == 0:  # the video ended before `start`
            return torch.zeros(1, 0, 3, H, W, device=self.device)
        if self.resize == "cv2" and (H, W) != (self.height, self.width):
            frames = np.stack(
                [cv2.resize(np.asarray(f), (W, H), interpolation=cv2.INTER_LINEAR) for f in frames]
            )
        rgbs = frames_to_rgbs(torch.as_tensor(frames).to(self.device)[None])  # 1,T,3,H,W
        rgbs = resize_frames(rgbs, self.image_size)  # 1,T,3,H',W'
        self.read_seconds += time.perf_counter() - began
        return rgbs

    def close(self) -> None:
        """Release what the source holds (decoder, cache); reading again starts afresh."""

    def __enter__(self) -> "Frames":
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class ArrayFrames(Frames):
    """A video in memory: T,H,W,3 uint8 RGB, numpy or torch (kept where it is; windows go to the device)."""

    def __init__(self, video: np.ndarray | torch.Tensor, name: str = "array", **kwargs: object) -> None:
        frames = torch.from_numpy(video) if isinstance(video, np.ndarray) else video
        if not isinstance(frames, torch.Tensor) or frames.dim() != 4 or frames.shape[-1] != 3:
            raise ValueError(f"video must be T,H,W,3 (numpy or torch) or a path, got {_describe(video)}")
        if frames.dtype != torch.uint8 or frames.shape[0] == 0:
            raise ValueError(f"video must hold at least one frame of uint8 RGB, got {_describe(video)}")
        T, H, W, _ = frames.shape
        super().__init__(name, T, H, W, **kwargs)
        self.video = frames

    def _read(self, start: int, end: int) -> torch.Tensor:
        self.frames_read += end - start
        return self.video[start:end]


class ImageFiles(Frames):
    """One image file per frame (jpg/png, decoded by cv2 as the official scripts), read when its window is
    requested; every image must have the first one's size."""

    def __init__(self, paths: Sequence[str | Path], name: str = "", **kwargs: object) -> None:
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise ValueError(f"no image files given for {name or 'a video'}")
        H, W, _ = read_image(self.paths[0]).shape
        super().__init__(name or str(self.paths[0].parent), len(self.paths), H, W, **kwargs)

    def _read(self, start: int, end: int) -> np.ndarray:
        frames = []
        for path in self.paths[start:end]:
            frame = read_image(path)  # H,W,3
            if frame.shape != (self.height, self.width, 3):
                raise ValueError(
                    f"image {path} is {frame.shape[1]}x{frame.shape[0]}, unlike the first image "
                    f"({self.width}x{self.height})"
                )
            frames.append(frame)
        self.frames_read += len(frames)
        return np.stack(frames)  # T,H,W,3


class VideoFileFrames(Frames):
    """A video file decoded forward once, whatever order the windows come in.

    The frame count is the container's; when decoding ends earlier, one warning gives both numbers and
    `num_frames` shrinks to the frames that decode (a window reaching past them comes back shorter).

    Args:
        max_frames: read only the first max_frames frames (None = all).
        cache: keep every decoded frame in a temporary file, so that windows before the ones held in memory
            (backward tracking) are read back instead of decoded again. Without it such a window is an error.
    """

    def __init__(
        self, path: str | Path, max_frames: int | None = None, cache: bool = False, **kwargs: object
    ) -> None:
        info = video_info(path)
        if max_frames is not None and max_frames < 1:
            raise ValueError(f"max_frames must be at least 1, got {max_frames}")
        self.path = Path(path)
        self.announced = info.num_frames
        self.limited = max_frames is not None and max_frames < info.num_frames
        num_frames = min(info.num_frames, max_frames) if max_frames is not None else info.num_frames
        super().__init__(str(self.path), num_frames, info.height, info.width, **kwargs)
        self.fps = info.fps
        self.cache = cache
        self._decoder = None
        self._decoded = 0  # frames the decoder has given so far
        self._held: list[np.ndarray] = []  # the frames [decoded - len(held), decoded), H,W,3 each
        # frames from the previous window's start on stay in memory: when a video ends early, the tracker
        # lays its last window out again, back to at most that start
        self._held_from = 0
        self._last_start: int | None = None
        self._store = None  # the cache file

    def _decode_until(self, end: int) -> None:
        """Decode frames up to `end` (or the video's end), holding those from _held_from on."""
        if self._decoder is None:
            self._decoder = read_video(self.path)
            if self.cache:
                self._store = tempfile.TemporaryFile(prefix="frames-", suffix=".cache")
        while self._decoded < end:
            frame = next(self._decoder, None)  # H,W,3
            if frame is None:
                self._ended_early()
                break
            if self._store is not None:
                self._store.seek(self._decoded * frame.nbytes)
                self._store.write(frame.tobytes())
            self._held.append(frame)
            self._decoded += 1
            self.frames_read += 1
        keep = max(self._decoded - self._held_from, 0)
        del self._held[: len(self._held) - keep]

    def _ended_early(self) -> None:
        logger.warning(
            "%s: the container announces %d frames but only %d decode; the tracks cover %d frames",
            self.path,
            self.announced,
            self._decoded,
            self._decoded,
        )
        self.num_frames = self._decoded

    def _check_longer(self) -> None:
        """At the last announced frame: say so if the video goes on (a container count that was short)."""
        if not self.limited and next(self._decoder, None) is not None:
            logger.warning(
                "%s: the container announces %d frames but more decode; only the first %d are read",
                self.path,
                self.announced,
                self.announced,
            )
        self.limited = True  # asked once

    def _cached(self, start: int, end: int) -> np.ndarray:
        frames = np.empty((end - start, self.height, self.width, 3), np.uint8)  # T,H,W,3
        self._store.seek(start * frames[0].nbytes)
        self._store.readinto(memoryview(frames).cast("B"))
        return frames

    def _read(self, start: int, end: int) -> np.ndarray:
        held_start = self._decoded - len(self._held)
        if start < held_start and self._store is None:
            raise ValueError(
                f"{self.path}: frame {start} was read and dropped; open it with cache=True to "
                "read windows backward"
            )
        previous = start if self._last_start is None else self._last_start
        self._held_from, self._last_start = min(previous, start), start
        self._decode_until(end)
        if self._decoded == self.num_frames and end == self.num_frames:
            self._check_longer()
        end = min(end, self._decoded)
        if start >= end:
            return np.zeros((0, self.height, self.width, 3), np.uint8)
        held_start = self._decoded - len(self._held)
        if start >= held_start:
            return np.stack(self._held[start - held_start : end - held_start])  # T,H,W,3
        return self._cached(start, end)  # T,H,W,3

    def close(self) -> None:
        if self._decoder is not None:
            self._decoder.close()
        if self._store is not None:
            self._store.close()
        self._decoder = self._store = None
        self._decoded, self._held, self._held_from, self._last_start = 0, [], 0, None


def open_frames(
    video: Video,
    image_size: Sequence[int] | None = None,
    device: torch.device | str = "cpu",
    *,
    max_frames: int | None = None,
    resize: str = "bilinear",
    cache: bool = False,
) -> Frames:
    """The frame source for `video`: a T,H,W,3 uint8 array or tensor, a video file, a folder of jpg/png
    frames (sorted by name), or a list of image paths.

    Args:
        image_size: H,W the windows are resized to (None = the video's own size).
        max_frames: use only the first max_frames frames (None = all).
        resize: "bilinear" or "cv2" (see the module docstring).
        cache: for video files, keep decoded frames on disk for backward windows (see VideoFileFrames).
    """
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be at least 1, got {max_frames}")
    common = {"image_size": image_size, "device": device, "resize": resize}
    if isinstance(video, (str, Path)):
        path = Path(video)
        if path.is_dir():
            return ImageFiles(image_files(path)[:max_frames], name=str(path), **common)
        return VideoFileFrames(path, max_frames=max_frames, cache=cache, **common)
    if isinstance(video, (np.ndarray, torch.Tensor)):
        return ArrayFrames(video[:max_frames], **common)
    if isinstance(video, Sequence) and video and all(isinstance(p, (str, Path)) for p in video):
        return ImageFiles(list(video)[:max_frames], **common)
    raise ValueError(
        f"video must be T,H,W,3 (numpy or torch), a path or a list of image paths, got {_describe(video)}"
    )


def _describe(video: object) -> str:
    if isinstance(video, (np.ndarray, torch.Tensor)):
        return f"{type(video).__name__} of shape {tuple(video.shape)} and dtype {video.dtype}"
    return type(video).__name__
