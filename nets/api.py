"""PipsTracker: track points through a video given as an array, a tensor or a file.

    tracker = PipsTracker.from_checkpoint()             # ./reference_model, best device
    tracks = tracker("video.mp4", grid_size=32)         # T,1024,2
    tracks = tracker(frames, queries=[[0, 120.0, 64.5], [40, 300.0, 200.0]])   # T,2,2

Query and track coordinates are x,y pixels of the input video (integers at pixel centres). Frames are
resized to the model's `image_size` one window at a time and coordinates scaled by W'/W, H'/H on the way
in and back on the way out. A video file is decoded lazily: only the frames of the current window are
held, so memory does not grow with the video's length.
"""

from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

import numpy as np
import torch
import torch.nn as nn

from nets.pips2 import Pips
from nets.tracker import resize_frames, track
from utils.checkpoint import load_weights
from utils.dist import fast_dtype, pick_device
from utils.video import read_video, video_info

REFERENCE_DIR = "./reference_model"
GRID_MARGIN = 8  # the official demo's grid margin, in pixels of the model's resolution

Video = np.ndarray | torch.Tensor | str | Path


def _model_input(frames: torch.Tensor, image_size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """T,H,W,3 uint8 -> 1,T,3,H',W' float RGB 0..255 on `device`, bilinearly resized to image_size."""
    return resize_frames(frames.to(device).permute(0, 3, 1, 2).float()[None], image_size)  # 1,T,3,H',W'


class ArrayFrames:
    """FrameSource over an in-memory T,H,W,3 uint8 video; each window is resized on `device`."""

    def __init__(self, video: torch.Tensor, image_size: tuple[int, int], device: torch.device) -> None:
        self.video = video
        self.num_frames, self.height, self.width, _ = video.shape
        self.image_size = image_size
        self.device = device

    def get(self, start: int, end: int) -> torch.Tensor:
        return _model_input(self.video[start:end], self.image_size, self.device)

    def close(self) -> None:
        """Nothing to release (the same interface as VideoFileFrames)."""


class VideoFileFrames:
    """FrameSource decoding a video file (or folder of frames) on demand.

    It keeps the frames from the last requested start on, so windows that move forward are decoded once;
    a request before them (a backward pass) re-opens the file and decodes from its start.
    """

    def __init__(
        self,
        path: str | Path,
        image_size: tuple[int, int],
        device: torch.device,
        max_frames: int | None = None,
    ) -> None:
        info = video_info(path)
        self.path = Path(path)
        self.num_frames = info.num_frames if max_frames is None else min(max_frames, info.num_frames)
        self.height, self.width, self.fps = info.height, info.width, info.fps
        self.image_size = image_size
        self.device = device
        self._reader = None
        self._first = 0  # frame index of self._frames[0]; the reader's next frame follows the last held one
        self._frames: list[np.ndarray] = []  # H,W,3 uint8 each

    def _open(self, start: int) -> None:
        self.close()
        self._reader = read_video(self.path, start=start, max_frames=self.num_frames - start)
        self._first = start

    def _next_frame(self) -> np.ndarray:
        frame = next(self._reader, None)  # H,W,3
        if frame is None:
            raise ValueError(f"video {self.path} ended before frame {self._first + len(self._frames)}")
        return frame

    def get(self, start: int, end: int) -> torch.Tensor:
        if not 0 <= start < end <= self.num_frames:
            raise ValueError(f"frames [{start}, {end}) are not among the {self.num_frames} of {self.path}")
        if self._reader is None or start < self._first:
            self._open(start)
        skip = start - self._first
        for _ in range(skip - len(self._frames)):
            self._next_frame()
        del self._frames[:skip]
        self._first = start
        while len(self._frames) < end - start:
            self._frames.append(self._next_frame())
        window = np.stack(self._frames[: end - start])  # T,H,W,3
        return _model_input(torch.from_numpy(window), self.image_size, self.device)

    def close(self) -> None:
        """Stop the decoder and drop the held frames."""
        if self._reader is not None:
            self._reader.close()
        self._reader, self._frames = None, []

    def __enter__(self) -> "VideoFileFrames":
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def grid_queries(grid_size: int, H: int, W: int, image_size: tuple[int, int] = (512, 896)) -> torch.Tensor:
    """grid_size^2 queries (t=0, x, y), row by row, in the pixels of an H x W video.

    The grid is the official demo's: at the model's resolution H',W' it spans [8, W'-8] x [8, H'-8],
    so here the margin is 8*W/W' in x and 8*H/H' in y. A 1x1 grid is the frame's centre. Returns N,3.
    """
    if isinstance(grid_size, bool) or not isinstance(grid_size, int) or grid_size < 1:
        raise ValueError(f"grid_size must be a positive integer, got {grid_size!r}")
    image_size = _check_size(image_size)
    steps = torch.linspace(0, 1, grid_size) if grid_size > 1 else torch.full((1,), 0.5)  # g
    mx, my = GRID_MARGIN * W / image_size[1], GRID_MARGIN * H / image_size[0]
    xs = mx + steps * (W - 2 * mx)  # g
    ys = my + steps * (H - 2 * my)  # g
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")  # g,g
    return torch.stack([torch.zeros(grid_size**2), grid_x.flatten(), grid_y.flatten()], dim=-1)  # N,3


def check_queries(queries: np.ndarray | torch.Tensor | Sequence, T: int, H: int, W: int) -> torch.Tensor:
    """Queries as an N,3 float32 CPU tensor of (t, x, y) rows, or ValueError naming the first bad row:
    t must be a whole frame index in [0, T-1], x in [0, W-1] and y in [0, H-1]."""
    q = torch.as_tensor(queries, dtype=torch.float32).cpu()
    if q.dim() != 2 or q.shape[1] != 3 or q.shape[0] == 0:
        raise ValueError(f"queries must be N,3 rows of t,x,y (N >= 1), got shape {tuple(q.shape)}")
    t, x, y = q.unbind(-1)  # N each
    checks = [
        (~torch.isfinite(q).all(-1), "is not finite"),
        (t != t.round(), "has a frame index t that is not a whole number"),
        ((t < 0) | (t > T - 1), f"lies outside the video's {T} frames (t must be in 0..{T - 1})"),
        ((x < 0) | (x > W - 1) | (y < 0) | (y > H - 1), f"lies outside the {W}x{H} frame"),
    ]
    for bad, why in checks:
        if bad.any():
            row = int(bad.nonzero()[0])
            t_, x_, y_ = q[row].tolist()
            raise ValueError(f"query row {row} (t={t_:g}, x={x_:g}, y={y_:g}) {why}")
    return q


def _check_size(image_size: Sequence[int]) -> tuple[int, int]:
    size = tuple(image_size) if isinstance(image_size, (tuple, list)) else ()
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ValueError(f"image_size must be two positive integers H,W, got {image_size!r}")
    return size


class PipsTracker:
    """PIPs++ as a callable: a video and query points in, tracks T,N,2 in the video's pixels out.

    Args:
        model: a Pips (or anything with its forward); it is put in eval mode and left on its device.
        S: frames per window. 64 is the length the reference model was fine-tuned on at 512x896: longer
            than the delta block's temporal receptive field (about 35 frames), half the memory of the
            evaluation's 128, and its windows still overlap by a single frame.
        iters: refinement iterations per window.
        image_size: H,W the frames are resized to for the model.
        fast: the model's fast path (Pips.set_fast: float16, channels_last, fused correlation); None = on
            on CUDA, the exact float32 path elsewhere. None leaves a model that is already on the fast path
            as it is.
        device: where frames are sent; None = the model's device.
    """

    def __init__(
        self,
        model: nn.Module,
        S: int = 64,
        iters: int = 16,
        image_size: Sequence[int] = (512, 896),
        fast: bool | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if S < 2 or iters < 1:
            raise ValueError(f"need S >= 2 and iters >= 1, got S={S}, iters={iters}")
        self.model = model.eval()
        if device is None:
            param = next(model.parameters(), None)
            device = param.device if param is not None else "cpu"
        self.device = torch.device(device)
        self.S, self.iters = S, iters
        self.image_size = _check_size(image_size)
        dtype = fast_dtype(self.device, fast is None or fast)
        self.fast = dtype is not None
        if self.fast or fast is not None:
            model.set_fast(self.fast, dtype)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path | None = None,
        device: torch.device | str | None = None,
        S: int = 64,
        iters: int = 16,
        image_size: Sequence[int] = (512, 896),
        fast: bool | None = None,
    ) -> "PipsTracker":
        """A tracker with the weights of `path` (a checkpoint file or directory; None = ./reference_model)
        on `device` (None = CUDA, then MPS, then CPU)."""
        dev = pick_device(str(device) if device is not None else "")
        model = Pips()
        load_weights(REFERENCE_DIR if path is None else path, model)
        return cls(model.to(dev), S=S, iters=iters, image_size=image_size, fast=fast, device=dev)

    def _source(self, video: Video, max_frames: int | None) -> ArrayFrames | VideoFileFrames:
        if max_frames is not None and max_frames < 1:
            raise ValueError(f"max_frames must be at least 1, got {max_frames}")
        if isinstance(video, (str, Path)):
            return VideoFileFrames(video, self.image_size, self.device, max_frames)
        frames = torch.from_numpy(video) if isinstance(video, np.ndarray) else video
        if not isinstance(frames, torch.Tensor) or frames.dim() != 4 or frames.shape[-1] != 3:
            raise ValueError(f"video must be T,H,W,3 (numpy or torch) or a path, got {_describe(video)}")
        if frames.dtype != torch.uint8 or frames.shape[0] == 0:
            raise ValueError(f"video must hold at least one frame of uint8 RGB, got {_describe(video)}")
        return ArrayFrames(frames[:max_frames], self.image_size, self.device)

    def __call__(
        self,
        video: Video,
        queries: np.ndarray | torch.Tensor | Sequence | None = None,
        grid_size: int | None = None,
        max_frames: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray | torch.Tensor:
        """Track `queries` (N,3 rows of t,x,y in the video's pixels, t any frame) or a grid_size^2 grid
        at frame 0 (see grid_queries) through the video's first `max_frames` frames (None = all).

        Args:
            video: T,H,W,3 uint8 RGB (numpy or torch), or the path of a video file or folder of frames.
            progress: called with the number of newly tracked frames after each forward window.
        Returns:
            T,N,2 float32 x,y pixels of the input video: a tensor on the video's device for a tensor
            input, else a numpy array. At its query frame a track equals its query.
        """
        if (queries is None) == (grid_size is None):
            raise ValueError("give exactly one of queries (N,3 rows of t,x,y) and grid_size")
        source = self._source(video, max_frames)
        try:
            H, W = source.height, source.width
            if grid_size is not None:
                q = grid_queries(grid_size, H, W, self.image_size)
            else:
                q = check_queries(queries, source.num_frames, H, W)
            scale = torch.tensor([self.image_size[1] / W, self.image_size[0] / H])  # 2, x then y
            q_model = torch.cat([q[:, :1], q[:, 1:] * scale], dim=-1).to(self.device)  # N,3
            tracks = track(self.model, source, q_model[None], self.S, self.iters, progress)  # 1,T,N,2
        finally:
            source.close()
        tracks = tracks[0].float().cpu() / scale  # T,N,2
        if isinstance(video, torch.Tensor):
            return tracks.to(video.device)
        return tracks.numpy()


def _describe(video: object) -> str:
    if isinstance(video, (np.ndarray, torch.Tensor)):
        return f"{type(video).__name__} of shape {tuple(video.shape)} and dtype {video.dtype}"
    return type(video).__name__
