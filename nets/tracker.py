"""Tracking through videos of any length: windows of S frames chained through the template features.

Frames are pulled from a `FrameSource` one window at a time, so memory does not grow with the video's
length (only the B,T,N,2 tracks do). Queries may sit at any frame: a point is tracked forward from its
query frame, and backward by running the time-reversed video. The sources themselves (arrays, video files,
image folders) live in tracking/frames.py.
"""

from collections.abc import Callable
from typing import NamedTuple, Protocol

import torch

from nets.pips2 import Feats, PipsOutput

Progress = Callable[[int], None]


class FrameSource(Protocol):
    """A video (or batch of B videos) read window by window at the model's resolution."""

    num_frames: int  # may shrink while reading, when a video turns out shorter than announced

    def get(self, start: int, end: int) -> torch.Tensor:
        """Frames [start, end) as B,T,3,H,W float RGB 0..255; fewer than end-start only when the video ended
        early, and then num_frames has shrunk to the frames that exist."""
        ...


class WindowModel(Protocol):
    """Pips, or anything that refines one window as Pips.forward does."""

    def __call__(
        self, trajs_e0: torch.Tensor, rgbs: torch.Tensor, iters: int, feat_init: Feats | None
    ) -> PipsOutput: ...


class VideoTracks(NamedTuple):
    """What tracking a video gives, in the pixels of the frames the model saw: positions, and the visibility
    head's logits where the model has one."""

    tracks: torch.Tensor  # B,T,N,2 pixels
    vis: torch.Tensor | None = None  # B,T,N visibility logits
    conf: torch.Tensor | None = None  # B,T,N confidence logits


class TrackingInterrupted(KeyboardInterrupt):
    """Ctrl-C while tracking. `partial` holds the frames done, as VideoTracks over frames [0, T'): the
    tracks of the points whose passes had reached them, NaN for the points not tracked yet."""

    def __init__(self, partial: VideoTracks) -> None:
        super().__init__()
        self.partial = partial


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

    @property
    def num_frames(self) -> int:
        return self.base.num_frames - self.first

    def get(self, start: int, end: int) -> torch.Tensor:
        return self.base.get(self.first + start, self.first + end)


def track_from_first_frame(
    model: WindowModel,
    source: FrameSource,
    xy: torch.Tensor,
    S: int = 128,
    iters: int = 16,
    progress: Progress | None = None,
) -> VideoTracks:
    """Track points given at frame 0 of `source` through all its frames (the official chaining).

    Windows of S frames overlap by one frame; the last window is shifted back to end at the last frame.
    The frame-0 templates (feats1) persist across windows and the re-sampled ones (feats2, feats4) of one
    window seed the next. Unseen future frames are initialised with zero velocity.

    Args:
        xy: B,N,2 query positions (x, y pixels of the source's frames) at frame 0.
        progress: called with the number of new frames covered after each window.
    Returns:
        VideoTracks: B,T,N,2 positions in pixels (and B,T,N logits where the model has a visibility head),
        T = the frames the source turned out to hold.
    """
    if S < 2:
        raise ValueError(f"window length S must be at least 2, got {S}")
    T = source.num_frames
    trajs = xy.detach()[:, None].repeat(1, T, 1, 1).float()  # B,T,N,2 zero-velocity init
    logits: dict[str, torch.Tensor] = {}  # vis, conf: B,T,N each
    cur, done, feat_init = 0, 1, None
    try:
        while T >= 2:
            end = cur + S
            if end > T:
                cur, end = max(cur - (end - T), 0), T
            rgbs = source.get(cur, end)  # B,S',3,H,W
            if rgbs.shape[1] < end - cur:  # the video ended early: lay the windows out again over what exists
                T = source.num_frames
                trajs = trajs[:, :T]
                logits = {k: v[:, :T] for k, v in logits.items()}
                continue
            with torch.no_grad():
                out = model(trajs[:, cur:end], rgbs, iters=iters, feat_init=feat_init)
            trajs[:, cur:end] = out.tracks.to(trajs.device)
            trajs[:, end:] = trajs[:, end - 1 : end]
            for name in ("vis", "conf"):
                value = getattr(out, name)
                if value is not None:
                    logits.setdefault(name, trajs.new_zeros(trajs.shape[:3]))[:, cur:end] = value.to(
                        trajs.device
                    )
            feat_init = out.feats
            if end > done:
                new, done = end - done, end  # done first: a Ctrl-C in the progress bar keeps this window
                if progress is not None:
                    progress(new)
            if end >= T:
                break
            cur += S - 1
    except KeyboardInterrupt:
        kept = [logits[k][:, :done] if k in logits else None for k in ("vis", "conf")]
        raise TrackingInterrupted(VideoTracks(trajs[:, :done], *kept)) from None
    return VideoTracks(trajs, logits.get("vis"), logits.get("conf"))


def track(
    model: WindowModel,
    source: FrameSource,
    queries: torch.Tensor,
    S: int = 128,
    iters: int = 16,
    progress: Progress | None = None,
) -> VideoTracks:
    """Track query points that may start at any frame, forward and backward in time.

    Query frames are taken in increasing order; each is one forward pass (to the last frame) and, after
    frame 0, one backward pass (to frame 0) over the time-reversed video.

    Args:
        queries: B,N,3 as (t, x, y): frame index and pixel position in the source's frames.
        progress: called with the number of newly tracked frames after each window of either pass, so the
            total over a call is (T - 1) * (number of distinct query frames).
    Returns:
        VideoTracks: B,T,N,2 positions (and B,T,N logits with a visibility head); at each query's own frame
        the track equals the query position.
    """
    B, N, _ = queries.shape
    T = source.num_frames
    t_q = queries[..., 0].round().long()  # B,N
    if (t_q < 0).any() or (t_q >= T).any():
        raise ValueError(f"query frames must lie in [0, {T - 1}], got {t_q.min().item()}..{t_q.max().item()}")
    result: list[torch.Tensor | None] | None = None  # tracks B,T,N,2, vis and conf B,T,N
    for t in t_q.unique().tolist():
        if t >= source.num_frames:
            raise ValueError(f"a query at frame {t} lies past the {source.num_frames} readable frames")
        mask = t_q == t  # B,N
        count = mask.sum(1)  # B
        n = int(count.max())
        # per batch item, the indices of its points starting at t, padded with its first such point
        order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :n]  # B,n
        keep = torch.arange(n, device=queries.device)[None] < count[:, None]  # B,n
        order = torch.where(keep, order, order[:, :1])
        xy = torch.gather(queries[..., 1:], 1, order[..., None].expand(B, n, 2))  # B,n,2
        fwd = None
        try:
            # forward over frames t.., then backward over frames t..0
            fwd = track_from_first_frame(model, _ShiftedFrames(source, t), xy, S, iters, progress)
            back = track_from_first_frame(model, _ReversedFrames(source, t), xy, S, iters, progress)
        except TrackingInterrupted as stop:
            if t == 0 and fwd is None:  # the first pass from frame 0: keep the frames it reached
                only_query = track_from_first_frame(model, _ReversedFrames(source, 0), xy, S, iters)
                result = _place(result, stop.partial, only_query, order, keep, N)
            todo = t_q > t if t == 0 and fwd is None else t_q >= t  # B,N: points without a track yet
            raise TrackingInterrupted(_unfinished(result, todo, B, N)) from None
        result = _place(result, fwd, back, order, keep, N)
    if result is None:  # no query
        return VideoTracks(queries.new_zeros(B, T, 0, 2))
    return VideoTracks(*result)


def _place(
    result: list[torch.Tensor | None] | None,
    fwd: VideoTracks,
    back: VideoTracks,
    order: torch.Tensor,
    keep: torch.Tensor,
    N: int,
) -> list[torch.Tensor | None]:
    """`result` (tracks, vis, conf over all N points) with the passes of one query frame's points written in:
    `order` B,n holds their indices, `keep` B,n which of them are real (not padding)."""
    B = order.shape[0]
    b_idx, j_idx = keep.nonzero(as_tuple=True)
    result = [None, None, None] if result is None else result
    for i, (back_i, fwd_i) in enumerate(zip(back, fwd, strict=True)):
        if back_i is None and fwd_i is None:
            continue
        # a pass over a single frame (the query's own) calls no model: take that frame from the other
        before = back_i.flip(1) if back_i is not None else fwd_i[:, :1]  # frames 0..t
        after = fwd_i[:, 1:] if fwd_i is not None else before[:, :0]  # frames t+1..
        seg = torch.cat([before, after], dim=1)  # B,T',n,...
        if result[i] is None:
            result[i] = seg.new_zeros(B, seg.shape[1], N, *seg.shape[3:])
        result[i] = result[i][:, : seg.shape[1]]  # a video that ended early keeps the frames that exist
        result[i][b_idx, :, order[b_idx, j_idx]] = seg[b_idx, :, j_idx]
    return result


def _unfinished(result: list[torch.Tensor | None] | None, todo: torch.Tensor, B: int, N: int) -> VideoTracks:
    """The tracks so far, NaN for the points `todo` (B,N) marks; no frame when no pass had finished."""
    if result is None or result[0] is None:
        return VideoTracks(todo.new_full((B, 0, N, 2), float("nan"), dtype=torch.float32))
    fields = []
    for r in result:
        mask = None if r is None else todo.view(B, 1, N, *([1] * (r.dim() - 3)))
        fields.append(None if r is None else r.masked_fill(mask, float("nan")))
    return VideoTracks(*fields)
