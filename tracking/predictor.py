"""PipsTracker, and the one function that builds a ready model from a checkpoint for a device and a job.

    tracker = PipsTracker.from_checkpoint()             # the reference model (REFERENCE_DIR), best device
    tracks = tracker("video.mp4", grid_size=32)         # T,1024,2
    tracks = tracker(frames, queries=[[0, 120.0, 64.5], [40, 300.0, 200.0]])   # T,2,2
    result = tracker.predict("video.mp4", grid_size=32)  # .tracks, and .visibility, .confidence (T,N)

Query and track coordinates are x,y pixels of the input video (integers at pixel centres). Frames are
resized to the model's `image_size` one window at a time and coordinates scaled by W'/W, H'/H on the way
in and back on the way out. A video file is decoded forward once, whatever frames the queries sit at, so
time grows linearly with the video's length and memory stays flat (tracking/frames.py).
"""

import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn

from nets.pips2 import VIS_HEAD_PREFIX, Feats, Pips, PipsOutput
from nets.precision import choose_precision
from nets.tracker import Progress, TrackingInterrupted, VideoTracks, track
from tracking.frames import Frames, Video, check_size, open_frames
from tracking.onnx_backend import OnnxWindow
from tracking.settings import fill_setting
from utils.checkpoint import REFERENCE_DIR, load_state, read_weights, strip_prefixes
from utils.dist import pick_device

GRID_MARGIN = 8  # the official demo's grid margin, in pixels of the model's resolution
JOBS = ("infer", "train")


def build_model(
    checkpoint: str | Path | None,
    device: torch.device | str = "",
    job: str = "infer",
    fast: bool = True,
    vis_head: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> Pips:
    """A Pips ready for `job`, with the weights of `checkpoint`, on `device`.

    Args:
        checkpoint: a checkpoint file, or a directory whose newest readable model-*.pth is used; None = the
            random initialisation of the current torch seed.
        device: '' = CUDA if available, then MPS, then CPU.
        job: "infer" (eval mode; the fast path autocasts to float16) or "train" (train mode; bfloat16).
        fast: the fast path where it pays (CUDA; nets/precision.py choose_precision); False, or CPU/MPS, =
            the exact float32 path. This is where the precision of every script's model is decided.
        vis_head: with the visibility head (Pips(vis_head=True)); None = as the checkpoint has it (none
            without a checkpoint). A checkpoint without the head loads into a model with it: every backbone
            weight strictly, and one warning says that the head starts untrained.
        log: called with one line saying what was loaded where.
    Raises:
        FileNotFoundError pointing at get_reference_model.sh when there is no checkpoint; ValueError naming
        the file when it is not a checkpoint of this model.
    """
    if job not in JOBS:
        raise ValueError(f"job must be one of {JOBS}, got {job!r}")
    dev = device if isinstance(device, torch.device) else pick_device(device)
    path, state = (None, None) if checkpoint is None else read_weights(checkpoint)
    if vis_head is None:
        names = strip_prefixes(state["model_state_dict"]) if state is not None else {}
        vis_head = any(name.startswith(VIS_HEAD_PREFIX) for name in names)
    model = Pips(stride=8, vis_head=vis_head)
    step = None if state is None else load_state(path, state, model, optional=(VIS_HEAD_PREFIX,))
    model = model.to(dev).train(job == "train")
    model.precision = choose_precision(dev, fast, training=job == "train")
    if log is not None:
        weights = "random weights" if state is None else f"{path} (step {step})"
        head = ", visibility head" if vis_head else ""
        dtype = str(model.precision.dtype).removeprefix("torch.")
        precision = f", fast path ({dtype})" if model.precision.fast else ""
        log(f"model: {weights}{head} on {dev}{precision}")
    return model


class Float16Guard:
    """Runs a Pips window by window for inference; where the model autocasts to float16 and a window's
    tracks overflow (non-finite), that window is redone without autocast, with one warning, and the model
    is left on float16 for the next."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __call__(
        self, trajs_e0: torch.Tensor, rgbs: torch.Tensor, iters: int, feat_init: Feats | None = None
    ) -> PipsOutput:
        out = self.model(trajs_e0, rgbs, iters=iters, feat_init=feat_init)
        precision = getattr(self.model, "precision", None)
        if precision is None or precision.dtype != torch.float16 or torch.isfinite(out.tracks).all():
            return out
        warnings.warn("float16 overflowed in a window; that window is redone in float32", stacklevel=2)
        self.model.precision = replace(precision, dtype=torch.float32)
        try:
            return self.model(trajs_e0, rgbs, iters=iters, feat_init=feat_init)
        finally:
            self.model.precision = precision


def grid_queries(grid_size: int, H: int, W: int, image_size: tuple[int, int] = (512, 896)) -> torch.Tensor:
    """grid_size^2 queries (t=0, x, y), row by row, in the pixels of an H x W video.

    The grid is the official demo's: at the model's resolution H',W' it spans [8, W'-8] x [8, H'-8],
    so here the margin is 8*W/W' in x and 8*H/H' in y. A 1x1 grid is the frame's centre. Returns N,3.
    """
    if isinstance(grid_size, bool) or not isinstance(grid_size, int) or grid_size < 1:
        raise ValueError(f"grid_size must be a positive integer, got {grid_size!r}")
    image_size = check_size(image_size)
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


class Prediction(NamedTuple):
    """What PipsTracker.predict gives: tracks in the video's own pixels, with the visibility head's
    estimates as probabilities where the model has one."""

    tracks: np.ndarray | torch.Tensor  # T,N,2 x,y pixels
    visibility: np.ndarray | torch.Tensor | None  # T,N probability that the point is visible (None: no head)
    confidence: np.ndarray | torch.Tensor | None  # T,N probability that the track is within a few pixels


class PipsTracker:
    """PIPs++ as a callable: a video and query points in, tracks T,N,2 in the video's pixels out.

    Args:
        model: a Pips (or anything with its forward); it is put in eval mode and left on its device.
        S: frames per window (None = 64 on a GPU, the CPU setting's elsewhere: tracking/settings.py). 64 is
            the length the reference model was fine-tuned on at 512x896: longer than the delta block's
            temporal receptive field (about 35 frames), half the memory of the evaluation's 128, and its
            windows still overlap by a single frame.
        iters: refinement iterations per window (None = 16 on a GPU, the CPU setting's elsewhere).
        image_size: H,W the frames are resized to for the model (None = 512x896 on a GPU, the CPU
            setting's elsewhere). Settings left None on a CPU are logged in one line.
        device: where frames are sent; None = the model's device.

    The model runs with the precision it has: build_model (and so from_checkpoint) puts it on the fast
    path where that pays; a window that overflows float16 is redone in float32 (Float16Guard).
    """

    def __init__(
        self,
        model: nn.Module,
        S: int | None = None,
        iters: int | None = None,
        image_size: Sequence[int] | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        self.model = model.eval()
        if device is None:
            param = next(model.parameters(), None)
            device = param.device if param is not None else "cpu"
        self.device = torch.device(device)
        S, iters, image_size = fill_setting(self.device, S, iters, image_size)
        if S < 2 or iters < 1:
            raise ValueError(f"need S >= 2 and iters >= 1, got S={S}, iters={iters}")
        self.S, self.iters = S, iters
        self.image_size = check_size(image_size)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path | None = None,
        device: torch.device | str | None = None,
        S: int | None = None,
        iters: int | None = None,
        image_size: Sequence[int] | None = None,
        fast: bool = True,
    ) -> "PipsTracker":
        """A tracker with the weights of `path` (a checkpoint file or directory; None = REFERENCE_DIR) on
        `device` (None = CUDA, then MPS, then CPU), on the fast path where it pays unless `fast` is False."""
        model = build_model(
            REFERENCE_DIR if path is None else path, "" if device is None else device, fast=fast
        )
        dev = next(model.parameters()).device
        return cls(model, S=S, iters=iters, image_size=image_size, device=dev)

    @classmethod
    def from_onnx(
        cls,
        path: str | Path,
        S: int | None = None,
        iters: int | None = None,
        image_size: Sequence[int] | None = None,
        providers: Sequence[str] | None = None,
    ) -> "PipsTracker":
        """A tracker whose windows run in onnxruntime (tracking/onnx_backend.py) from an export_onnx.py file;
        S, iters and image_size default to the export's, and other values than it takes are a ValueError
        naming the file."""
        window = OnnxWindow(path, providers)
        spec = window.spec
        image_size = (spec.height, spec.width) if image_size is None else check_size(image_size)
        iters = spec.iters if iters is None else iters
        window.check(image_size, iters)
        return cls(window, S=spec.S if S is None else S, iters=iters, image_size=image_size, device="cpu")

    def __call__(
        self,
        video: Video | Frames,
        queries: np.ndarray | torch.Tensor | Sequence | None = None,
        grid_size: int | None = None,
        max_frames: int | None = None,
        progress: Progress | None = None,
    ) -> np.ndarray | torch.Tensor:
        """Track `queries` (N,3 rows of t,x,y in the video's pixels, t any frame) or a grid_size^2 grid
        at frame 0 (see grid_queries) through the video's first `max_frames` frames (None = all).

        Args:
            video: T,H,W,3 uint8 RGB (numpy or torch), the path of a video file or folder of frames, or a
                frame source of tracking/frames.py opened at the tracker's image_size and device (read
                from its first frame; its frames_read and read_seconds count on).
            progress: called with the number of newly tracked frames after each window; over a call they
                add up to (T - 1) * (the number of distinct query frames).
        Returns:
            T,N,2 float32 x,y pixels of the input video: a tensor on the video's device for a tensor
            input, else a numpy array. At its query frame a track equals its query. T is the number of
            frames that could be read (a truncated video file gives fewer than it announces, with a warning).
            `predict` gives the visibility and confidence too.
        """
        return self.predict(video, queries, grid_size, max_frames, progress).tracks

    def predict(
        self,
        video: Video | Frames,
        queries: np.ndarray | torch.Tensor | Sequence | None = None,
        grid_size: int | None = None,
        max_frames: int | None = None,
        progress: Progress | None = None,
    ) -> Prediction:
        """As calling the tracker, with the visibility and confidence of every track at every frame as
        probabilities T,N where the model has a visibility head (None otherwise)."""
        if (queries is None) == (grid_size is None):
            raise ValueError("give exactly one of queries (N,3 rows of t,x,y) and grid_size")
        with self._open(video, max_frames) as source:
            H, W = source.height, source.width
            if grid_size is not None:
                q = grid_queries(grid_size, H, W, self.image_size)
            else:
                q = check_queries(queries, source.num_frames, H, W)
            source.cache = bool((q[:, 0] > 0).any())  # backward passes read earlier frames again
            scale = torch.tensor([self.image_size[1] / W, self.image_size[0] / H])  # 2, x then y
            q_model = torch.cat([q[:, :1], q[:, 1:] * scale], dim=-1).to(self.device)  # N,3
            try:
                out = track(Float16Guard(self.model), source, q_model[None], self.S, self.iters, progress)
            except TrackingInterrupted as stop:
                raise PredictionInterrupted(_prediction(stop.partial, scale, video)) from None
        return _prediction(out, scale, video)

    def _open(self, video: Video | Frames, max_frames: int | None) -> Frames:
        """The frame source of `video`; a given source once it is known to read what the model takes, closed
        so that it reads from its first frame."""
        if not isinstance(video, Frames):
            return open_frames(video, self.image_size, self.device, max_frames=max_frames)
        if max_frames is not None:
            raise ValueError(f"max_frames applies to a video the tracker opens; open {video.name} with it")
        if video.image_size != self.image_size or _resolved(video.device) != _resolved(self.device):
            (h, w), (H, W) = video.image_size, self.image_size
            message = f"frame source {video.name} gives {h}x{w} frames on {video.device}"
            raise ValueError(f"{message}; this tracker takes {H}x{W} frames on {self.device}")
        video.close()
        return video


class PredictionInterrupted(KeyboardInterrupt):
    """Ctrl-C during PipsTracker.predict; `partial` is the Prediction of the frames done (T' <= T frames,
    NaN for points not tracked yet)."""

    def __init__(self, partial: Prediction) -> None:
        super().__init__()
        self.partial = partial


def _prediction(out: VideoTracks, scale: torch.Tensor, video: Video | Frames) -> Prediction:
    """Batch item 0 of `out` in the video's pixels, visibility and confidence as probabilities, as numpy
    arrays (tensors on the video's device for a tensor video)."""
    fields = [out.tracks[0].float().cpu() / scale]  # T,N,2
    fields += [None if x is None else torch.sigmoid(x[0].float()).cpu() for x in (out.vis, out.conf)]  # T,N
    if isinstance(video, torch.Tensor):
        return Prediction(*(None if x is None else x.to(video.device) for x in fields))
    return Prediction(*(None if x is None else x.numpy() for x in fields))


def _resolved(device: torch.device) -> torch.device:
    """`device` with its index, as tensors report it ("cuda" is the current CUDA device)."""
    return torch.empty(0, device=device).device
