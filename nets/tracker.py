"""Tracking through videos of any length: windows of S frames chained through the template features.

Frames are pulled from a `FrameSource` one window at a time, so memory does not grow with the video's
length (only the B,T,N,2 tracks do). Queries may sit at any frame: a point is tracked forward from its
query frame, and backward by running the time-reversed video.
"""

from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F

from nets.pips2 import Pips


class FrameSource(Protocol):
    """A video (or batch of B videos) read window by window at the model's resolution."""

    num_frames: int

    def get(self, start: int, end: int) -> torch.Tensor:
        """Frames [start, end) as B,T,3,H,W float RGB 0..255."""
        ...


class TensorFrames:
    """A FrameSource over a tensor already in memory (B,T,3,H,W, any dtype), moved to `device` per window."""

    def __init__(self, video: torch.Tensor, device: torch.device | str | None = None) -> None:
        if video.dim() != 5 or video.shape[2] != 3:
            raise ValueError(f"video must be B,T,3,H,W, got {tuple(video.shape)}")
        self.video = video
        self.num_frames = video.shape[1]
        self.device = device if device is not None else video.device

    def get(self, start: int, end: int) -> torch.Tensor:
        return self.video[:, start:end].to(self.device, torch.float32)


def resize_frames(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """B,T,3,H,W float -> B,T,3,H',W' bilinear (align_corners=False, the official TAP-Vid and demo resize);
    frames already of that size are returned as they are."""
    B, T, C, H, W = frames.shape
    if (H, W) == tuple(size):
        return frames
    resized = F.interpolate(frames.flatten(0, 1), size=tuple(size), mode="bilinear", align_corners=False)
    return resized.reshape(B, T, C, *size)  # B,T,3,H',W'


class ResizedFrames:
    """Frames of another source resized to size (H, W) with resize_frames."""

    def __init__(self, base: FrameSource, size: tuple[int, int]) -> None:
        self.base = base
        self.size = size
        self.num_frames = base.num_frames

    def get(self, start: int, end: int) -> torch.Tensor:
        return resize_frames(self.base.get(start, end), self.size)


class _ReversedFrames:
    """Local time i of this source is frame `last - i` of the base source."""

    def __init__(self, base: FrameSource, last: int) -> None:
        self.base, self.last = base, last
        self.num_frames = last + 1

    def get(self, start: int, end: int) -> torch.Tensor:
        return self.base.get(self.last - end + 1, self.last - start + 1).flip(1)


class _ShiftedFrames:
    """Local time i of this source is frame `first + i` of the base source."""

    def __init__(self, base: FrameSource, first: int) -> None:
        self.base, self.first = base, first
        self.num_frames = base.num_frames - first

    def get(self, start: int, end: int) -> torch.Tensor:
        return self.base.get(self.first + start, self.first + end)


@torch.no_grad()
def track_from_first_frame(
    model: Pips,
    source: FrameSource,
    xy: torch.Tensor,
    S: int = 128,
    iters: int = 16,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Track points given at frame 0 of `source` through all its frames (the official chaining).

    Windows of S frames overlap by one frame; the last window is shifted back to end at the last frame.
    The frame-0 templates (feats1) persist across windows and the re-sampled ones (feats2, feats4) of one
    window seed the next. Unseen future frames are initialised with zero velocity.

    Args:
        xy: B,N,2 query positions (x, y pixels of the source's frames) at frame 0.
        progress: called with the number of new frames covered after each window.
    Returns:
        B,T,N,2 tracks in pixels.
    """
    T = source.num_frames
    trajs = xy[:, None].repeat(1, T, 1, 1).float()  # B,T,N,2 zero-velocity init
    if T < 2:
        return trajs
    if S < 2:
        raise ValueError(f"window length S must be at least 2, got {S}")
    cur, done, feat_init = 0, 1, None
    while True:
        end = cur + S
        if end > T:
            cur, end = max(cur - (end - T), 0), T
        out = model(trajs[:, cur:end], source.get(cur, end), iters=iters, feat_init=feat_init)
        trajs[:, cur:end] = out.coords[-1].to(trajs.device)
        trajs[:, end:] = trajs[:, end - 1 : end]
        feat_init = out.feats
        if progress is not None:
            progress(end - done)
            done = end
        if end >= T:
            return trajs
        cur += S - 1


@torch.no_grad()
def track(
    model: Pips,
    source: FrameSource,
    queries: torch.Tensor,
    S: int = 128,
    iters: int = 16,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Track query points that may start at any frame, forward and backward in time.

    Args:
        queries: B,N,3 as (t, x, y): frame index and pixel position in the source's frames.
    Returns:
        B,T,N,2 tracks; at each query's own frame the track equals the query position.
    """
    B, N, _ = queries.shape
    T = source.num_frames
    t_q = queries[..., 0].round().long()  # B,N
    if (t_q < 0).any() or (t_q >= T).any():
        raise ValueError(f"query frames must lie in [0, {T - 1}], got {t_q.min().item()}..{t_q.max().item()}")
    tracks = queries.new_zeros(B, T, N, 2, dtype=torch.float32)
    for t in t_q.unique().tolist():
        mask = t_q == t  # B,N
        count = mask.sum(1)  # B
        n = int(count.max())
        # per batch item, the indices of its points starting at t, padded with its first such point
        order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :n]  # B,n
        keep = torch.arange(n, device=queries.device)[None] < count[:, None]  # B,n
        order = torch.where(keep, order, order[:, :1])
        xy = torch.gather(queries[..., 1:], 1, order[..., None].expand(B, n, 2))  # B,n,2
        fwd = track_from_first_frame(model, _ShiftedFrames(source, t), xy, S, iters, progress)  # B,T-t,n,2
        seg = torch.cat([torch.flip(_backward(model, source, t, xy, S, iters), [1]), fwd[:, 1:]], dim=1)
        b_idx, j_idx = keep.nonzero(as_tuple=True)
        tracks[b_idx, :, order[b_idx, j_idx]] = seg[b_idx, :, j_idx].to(tracks.device)
    return tracks


def _backward(model: Pips, source: FrameSource, t: int, xy: torch.Tensor, S: int, iters: int) -> torch.Tensor:
    """Tracks over frames t, t-1, ..., 0 (B,t+1,n,2), from the time-reversed video."""
    return track_from_first_frame(model, _ReversedFrames(source, t), xy, S, iters)
