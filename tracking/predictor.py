"""PipsTracker, and the one function that builds a ready model from a checkpoint for a device and a job.

    tracker = PipsTracker.from_checkpoint()             # ./reference_model, best device
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
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn

from nets.pips2 import VIS_HEAD_PREFIX, Feats, Pips, PipsOutput
from nets.tracker import Progress, track
from tracking.frames import Video, check_size, open_frames
from tracking.onnx_backend import OnnxWindow
from tracking.settings import fill_setting
from utils.checkpoint import load_state, read_weights, strip_prefixes
from utils.dist import fast_dtype, pick_device

REFERENCE_DIR = "./reference_model"
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
        fast: the fast path where it pays (CUDA); False, or CPU/MPS, = the exact float32 path.
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
    dtype = fast_dtype(dev, fast, training=job == "train")
    model = model.to(dev).train(job == "train").set_fast(dtype is not None, dtype)
    if log is not None:
        weights = "random weights" if state is None else f"{path} (step {step})"
        head = ", visibility head" if vis_head else ""
        precision = f", fast path ({str(dtype).removeprefix('torch.')})" if dtype is not None else ""
        log(f"model: {weights}{head} on {dev}{precision}")
    return model


class Float16Guard:
    """Runs a Pips window by window for inference; where the model autocasts to float16 and a window's
    tracks overflow (non-finite), that window is redone without autocast, with one warning."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __call__(
        self, trajs_e0: torch.Tensor, rgbs: torch.Tensor, iters: int, feat_init: Feats | None = None
    ) -> PipsOutput:
        out = self.model(trajs_e0, rgbs, iters=iters, feat_init=feat_init)
        if getattr(self.model, "fast_dtype", None) == torch.float16 and not torch.isfinite(out.tracks).all():
            warnings.warn("float16 overflowed in a window; that window is redone in float32", stacklevel=2)
            out = self.model(trajs_e0, rgbs, iters=iters, feat_init=feat_init, dtype=torch.float32)
        return out


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
    """Tracks of a video, in its pixels, with the visibility head's estimates where the model has one."""

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
        fast: the model's fast path (Pips.set_fast: float16, channels_last, fused correlation); None = on
            on CUDA, the exact float32 path elsewhere. None leaves a model that is already on the fast path
            as it is.
        device: where frames are sent; None = the model's device.
    """

    def __init__(
        self,
        model: nn.Module,
        S: int | None = None,
        iters: int | None = None,
        image_size: Sequence[int] | None = None,
        fast: bool | None = None,
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
        dtype = fast_dtype(self.device, fast is None or fast)
        self.fast = dtype is not None
        if self.fast or fast is not None:
            model.set_fast(self.fast, dtype)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path | None = None,
        device: torch.device | str | None = None,
        S: int | None = None,
        iters: int | None = None,
        image_size: Sequence[int] | None = None,
        fast: bool | None = None,
    ) -> "PipsTracker":
        """A tracker with the weights of `path` (a checkpoint file or directory; None = ./reference_model)
        on `device` (None = CUDA, then MPS, then CPU)."""
        model = build_model(REFERENCE_DIR if path is None else path, "" if device is None else device,
                            fast=fast is None or fast)  # fmt: skip
        dev = next(model.parameters()).device
        return cls(model, S=S, iters=iters, image_size=image_size, fast=fast, device=dev)

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
        video: Video,
        queries: np.ndarray | torch.Tensor | Sequence | None = None,
        grid_size: int | None = None,
        max_frames: int | None = None,
        progress: Progress | None = None,
    ) -> np.ndarray | torch.Tensor:
        """Track `queries` (N,3 rows of t,x,y in the video's pixels, t any frame) or a grid_size^2 grid
        at frame 0 (see grid_queries) through the video's first `max_frames` frames (None = all).

        Args:
            video: T,H,W,3 uint8 RGB (numpy or torch), or the path of a video file or folder of frames.
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
        video: Video,
        queries: np.ndarray | torch.Tensor | Sequence | None = None,
        grid_size: int | None = None,
        max_frames: int | None = None,
        progress: Progress | None = None,
    ) -> Prediction:
        """As calling the tracker, with the visibility and confidence of every track at every frame as
        probabilities T,N where the model has a visibility head (None otherwise)."""
        if (queries is None) == (grid_size is None):
            raise ValueError("give exactly one of queries (N,3 rows of t,x,y) and grid_size")
        with open_frames(video, self.image_size, self.device, max_frames=max_frames) as source:
            H, W = source.height, source.width
            if grid_size is not None:
                q = grid_queries(grid_size, H, W, self.image_size)
            else:
                q = check_queries(queries, source.num_frames, H, W)
            source.cache = bool((q[:, 0] > 0).any())  # backward passes read earlier frames again
            scale = torch.tensor([self.image_size[1] / W, self.image_size[0] / H])  # 2, x then y
            q_model = torch.cat([q[:, :1], q[:, 1:] * scale], dim=-1).to(self.device)  # N,3
            out = track(Float16Guard(self.model), source, q_model[None], self.S, self.iters, progress)
        fields = [out.tracks[0].float().cpu() / scale]  # T,N,2
        fields += [
            None if x is None else torch.sigmoid(x[0].float()).cpu() for x in (out.vis, out.conf)
        ]  # T,N
        if isinstance(video, torch.Tensor):
            return Prediction(*(None if x is None else x.to(video.device) for x in fields))
        return Prediction(*(None if x is None else x.numpy() for x in fields))
