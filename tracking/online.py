"""Online tracking: frames pushed as they arrive, points added at any frame, final tracks one window later.

    online = OnlineTracker(PipsTracker.from_checkpoint(S=16))
    for t, frame in enumerate(camera):             # H,W,3 uint8 RGB, one at a time
        step = online.push(frame)                  # step.final: the frames whose tracks became final
        if t == 0:
            online.add_queries([[120.0, 64.5]])    # x,y in the stream's pixels, tracked from this frame
        draw(step.final.frames, step.final.tracks)  # F frame indices, F,N,2 tracks
    draw(*online.flush().final[:2])                # the stream ended: the last frames' tracks

The points added at one frame are tracked as PipsTracker tracks them forward from that frame: windows of S
frames that overlap by one, chained through the templates, and at the end of the stream a last window
shifted back to end at its last frame. So the tracks equal the offline ones from each point's frame on.
Each frame is resized to the model's size when it arrives; only the last S frames are held.
"""

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from nets.pips2 import Feats, frames_to_rgbs
from tracking.frames import resize_frames
from tracking.predictor import Float16Guard, PipsTracker, check_queries


class TrackFrames(NamedTuple):
    """Tracks of consecutive frames of a stream, in its pixels, for every point added so far (in the order
    the points were added: column i is the point whose id add_queries returned as i)."""

    frames: np.ndarray  # F int64 frame indices, consecutive
    tracks: np.ndarray  # F,N,2 float32 x,y pixels; NaN at frames before a point's own frame
    visibility: np.ndarray | None  # F,N probability that the point is visible (None: no visibility head)
    confidence: np.ndarray | None  # F,N probability that the track is within a few pixels


class Step(NamedTuple):
    """What a push or a flush gives."""

    final: TrackFrames  # frames whose tracks will not change any more
    provisional: TrackFrames | None  # the newest frame's estimate (provisional on), else None


@dataclass
class _Window:
    """One run of the model: its first frame in the stream and its outputs, in the model's pixels."""

    start: int
    tracks: torch.Tensor  # S',n,2
    vis: torch.Tensor | None  # S',n logits
    conf: torch.Tensor | None  # S',n logits
    feats: Feats  # (feats1, feats2, feats4), each 1,S',n,C: they chain the next window
    columns: np.ndarray | None = None  # the chain's points it tracks (None = all)


@dataclass
class _Chain:
    """The points added at one frame, and the windows that track them."""

    first: int  # the frame the points were added at
    ids: list[int]  # their columns in the outputs
    xy: torch.Tensor  # n,2 positions at `first`, model pixels
    cursor: int  # the first frame of the window under way
    end: int  # the frame that completes it
    joining: bool = False  # its points join the first chain when its window completes (join=True)
    firsts: list[int] = field(default_factory=list)  # each point's own frame (points that joined: later)
    last: _Window | None = None  # the last completed window (it ends at `cursor`)
    # provisional estimates: the frame-0 templates (1,1,n,C) and the best guess at each frame from cursor on
    templates: torch.Tensor | None = None
    guesses: list[torch.Tensor] = field(default_factory=list)  # n,2 each


class OnlineTracker:
    """PIPs++ on a stream: `push` one frame at a time, `add_queries` at the current frame, `flush` at the end.

    A frame's tracks are final when S-1 more frames have arrived (one window behind): the window that holds
    the frame has then completed, and a last window that a stream ending now would shift back no longer
    reaches it. `flush` gives the rest. Where this differs from PipsTracker:
      - Points are tracked forward only: before its own frame a point's track is NaN (offline tracks it
        backward there).
      - Visibility and confidence at a point's own frame come from its first forward window (offline: from
        the backward pass), and at frame T-S of a stream of T frames that ends off a window boundary from the
        window that holds it (offline: from the last window, shifted back to start there, which was run
        after that frame was final). Positions are the same at both.
      - Each frame that points are added at starts a chain of windows of its own, as each query frame is a
        pass of its own offline: the cost per frame grows with the number of such frames. With join=True
        it does not, but the joining points' tracks differ from offline's (see `join`).

    Args:
        tracker: its model, S, iters, image size and device are used (and its fast path, as set).
        provisional: 0 = no provisional estimates; K >= 2 = at each push, a window over the last K frames
            (at most those of the window under way) gives an estimate for the newest frame, anchored at the
            best estimate K-1 frames back. K = S runs the whole window under way (up to S-1 frames per push).
        join: points added while the first points' window is under way join it: their first window runs
            from their frame to its end (shorter than S, where offline runs S frames from their frame), and
            from then on they share its windows, so one window runs per S-1 frames however many frames
            points are added at. Points added at a frame where that window starts track as offline.
    """

    def __init__(self, tracker: PipsTracker, provisional: int = 0, join: bool = False) -> None:
        if provisional != 0 and not 2 <= provisional <= tracker.S:
            raise ValueError(f"provisional must be 0 or 2..S={tracker.S} frames, got {provisional}")
        self.model = Float16Guard(tracker.model)
        self.S, self.iters = tracker.S, tracker.iters
        self.image_size = tracker.image_size
        self.device = tracker.device
        self.provisional = provisional
        self.join = join
        self.has_head = getattr(tracker.model, "vis_head", None) is not None
        self.height = self.width = 0  # the stream's frame size, set by the first frame
        self.num_frames = 0  # frames pushed
        self.num_points = 0  # points added
        self._frames: deque[torch.Tensor] = deque(maxlen=self.S)  # the last S frames, H',W',3 float each
        self._chains: list[_Chain] = []
        self._emitted = 0  # frames whose final tracks were given
        self._scale = torch.ones(2)  # x then y: model pixels per stream pixel
        self._ended = False

    @property
    def frames_held(self) -> int:
        """Frames held at the model's resolution (at most S)."""
        return len(self._frames)

    def push(self, frame: np.ndarray | torch.Tensor) -> Step:
        """Add the next frame (H,W,3 uint8 RGB, the first frame's size); returns the frames that became final
        (one frame once S frames have arrived, none before) and, with `provisional`, this frame's estimate."""
        rgb = self._check_frame(frame)
        now = self.num_frames
        resized = resize_frames(
            frames_to_rgbs(rgb.to(self.device)[None, None]), self.image_size
        )  # 1,1,3,H',W'
        self._frames.append(resized[0, 0].movedim(0, -1).contiguous())  # H',W',3
        self.num_frames += 1
        for chain in list(self._chains):
            if now == chain.end:
                self._complete(chain, now)
                if chain.joining:
                    self._merge(self._chains[0], chain)
        estimates = [self._estimate(chain, now) if self.provisional else None for chain in self._chains]
        provisional = None
        if self.provisional:
            provisional = self._collect(range(now, now + 1), [[w] for w in estimates])
        f = now - (self.S - 1)
        if f < self._emitted:
            return Step(self._collect(range(0), [[] for _ in self._chains]), provisional)
        final = self._collect(range(f, f + 1), [[chain.last] for chain in self._chains])
        self._emitted = f + 1
        return Step(final, provisional)

    def add_queries(self, points: np.ndarray | torch.Tensor | Sequence) -> np.ndarray:
        """Track N points from the current frame (the last one pushed): N,2 rows of x,y in the stream's
        pixels, inside the frame. Returns their ids, the columns of their tracks in every output."""
        if self._ended:
            raise ValueError("the stream has ended (flush was called)")
        if self.num_frames == 0:
            raise ValueError("points are added at the current frame: push a frame first")
        xy = torch.as_tensor(points, dtype=torch.float32).cpu()
        if xy.dim() != 2 or xy.shape[1] != 2 or xy.shape[0] == 0:
            raise ValueError(f"points must be N,2 rows of x,y (N >= 1), got shape {tuple(xy.shape)}")
        now = self.num_frames - 1
        t = torch.full((len(xy), 1), float(now))
        check_queries(torch.cat([t, xy], dim=1), now + 1, self.height, self.width)
        xy_model = (xy * self._scale).to(self.device)  # n,2
        ids = list(range(self.num_points, self.num_points + len(xy)))
        self.num_points += len(xy)
        chain = self._chains[-1] if self._chains else None
        if chain is not None and chain.first == now:  # no window of these points has run yet
            chain.ids += ids
            chain.firsts += [now] * len(ids)
            chain.xy = torch.cat([chain.xy, xy_model])
            chain.guesses = [chain.xy]
            return np.array(ids, dtype=np.int64)
        joining = self.join and bool(self._chains)
        end = self._chains[0].end if joining else now + self.S - 1
        chain = _Chain(now, ids, xy_model, cursor=now, end=end, joining=joining, firsts=[now] * len(ids))
        chain.guesses = [xy_model]
        self._chains.append(chain)
        return np.array(ids, dtype=np.int64)

    def flush(self) -> Step:
        """End the stream: run each chain's last window (shifted back to end at the last frame, as offline)
        and give the final tracks of the frames not given yet. Nothing can be pushed afterwards."""
        T = self.num_frames
        windows = [[chain.last, *self._last_windows(chain, T)] for chain in self._chains]
        final = self._collect(range(self._emitted, T), windows)
        self._emitted = T
        self._ended = True
        self._frames.clear()
        return Step(final, None)

    def _last_windows(self, chain: _Chain, T: int) -> list[_Window]:
        """The windows that end a chain at frame T-1: shifted back to start at T-S, or at a point's own frame
        where that is later (one window per such start)."""
        if chain.cursor >= T - 1:
            return []
        starts = np.maximum(T - self.S, chain.firsts)  # n
        windows = []
        for start in np.unique(starts).tolist():
            columns = np.flatnonzero(starts == start) if len(set(starts.tolist())) > 1 else None
            init = self._init(chain, start, T)
            feat_init = None if chain.last is None else chain.last.feats
            if columns is not None:
                init = init[:, columns]
                feat_init = None if feat_init is None else tuple(f[:, :, columns] for f in feat_init)
            window = self._run(start, T, init, feat_init)
            window.columns = columns
            windows.append(window)
        return windows

    def _merge(self, main: _Chain, chain: _Chain) -> None:
        """Points whose first window has just completed with main's join main's chain: their window's outputs
        are laid over main's window, on its frames before theirs NaN tracks and their first templates."""
        a, b = main.last, chain.last
        before = len(a.tracks) - len(b.tracks)  # frames of main's window before the joining points' frame

        def join(
            x: torch.Tensor | None, y: torch.Tensor | None, time: int, fill_nan: bool
        ) -> torch.Tensor | None:
            """x and y side by side along the points dim (time + 1), y put `before` frames later."""
            if x is None:
                return None
            head = y.narrow(time, 0, 1).expand(*y.shape[:time], before, *y.shape[time + 1 :])
            head = torch.full_like(head, float("nan")) if fill_nan else head
            return torch.cat([x, torch.cat([head, y], dim=time)], dim=time + 1)

        main.last = _Window(
            a.start,
            join(a.tracks, b.tracks, 0, fill_nan=True),  # S,n+m,2
            join(a.vis, b.vis, 0, fill_nan=True),  # S,n+m
            join(a.conf, b.conf, 0, fill_nan=True),  # S,n+m
            tuple(
                join(fa, fb, 1, fill_nan=False) for fa, fb in zip(a.feats, b.feats, strict=True)
            ),  # 1,S,n+m,C
        )
        main.ids += chain.ids
        main.firsts += chain.firsts
        main.xy = torch.cat([main.xy, chain.xy])
        main.guesses = [main.last.tracks[-1]]
        self._chains.remove(chain)

    def _check_frame(self, frame: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The frame as a H,W,3 uint8 CPU tensor, or ValueError naming what is wrong with it."""
        if self._ended:
            raise ValueError("the stream has ended (flush was called)")
        rgb = torch.from_numpy(np.ascontiguousarray(frame)) if isinstance(frame, np.ndarray) else frame
        is_rgb = isinstance(rgb, torch.Tensor) and rgb.dim() == 3 and rgb.shape[2] == 3
        if not is_rgb or rgb.dtype != torch.uint8:
            got = f"{tuple(getattr(frame, 'shape', ()))} {getattr(frame, 'dtype', type(frame).__name__)}"
            raise ValueError(f"frame {self.num_frames} must be H,W,3 uint8 RGB, got {got}")
        H, W, _ = rgb.shape
        if self.num_frames == 0:
            self.height, self.width = H, W
            self._scale = torch.tensor([self.image_size[1] / W, self.image_size[0] / H])
        elif (H, W) != (self.height, self.width):
            first = f"{self.width}x{self.height}"
            raise ValueError(f"frame {self.num_frames} is {W}x{H}, unlike the stream's first frame ({first})")
        return rgb

    def _held(self, start: int, end: int) -> torch.Tensor:
        """Frames [start, end) at the model's resolution, 1,T,3,H',W', laid out in memory as the offline
        frame sources lay them out (channels last), so that the model runs the same kernels on them."""
        first = self.num_frames - len(self._frames)
        assert first <= start < end <= self.num_frames, f"frames [{start}, {end}) are no longer held"
        return frames_to_rgbs(torch.stack([self._frames[t - first] for t in range(start, end)])[None])

    def _run(self, start: int, end: int, init: torch.Tensor, feat_init: Feats | None) -> _Window:
        """The model over frames [start, end) from the initial tracks init (end-start),n,2."""
        with torch.no_grad():
            out = self.model(init[None], self._held(start, end), iters=self.iters, feat_init=feat_init)
        vis, conf = (None if x is None else x[0].float() for x in (out.vis, out.conf))
        return _Window(start, out.tracks[0].float(), vis, conf, out.feats)

    def _value(self, chain: _Chain, frame: int) -> torch.Tensor:
        """The chain's tracks n,2 at `frame`, a frame of its last completed window (or its own first)."""
        if chain.last is None:
            return chain.xy
        return chain.last.tracks[frame - chain.last.start]

    def _init(self, chain: _Chain, start: int, end: int) -> torch.Tensor:
        """Initial tracks (end-start),n,2 of a window: the last window's tracks up to the cursor, then zero
        velocity from there (as nets.tracker does)."""
        known = [self._value(chain, t) for t in range(start, chain.cursor + 1)]
        return torch.stack(known + known[-1:] * (end - 1 - chain.cursor))

    def _complete(self, chain: _Chain, now: int) -> None:
        """Run the window under way, which `now` completes; the next one starts at its last frame."""
        feat_init = None if chain.last is None else chain.last.feats
        window = self._run(chain.cursor, now + 1, self._init(chain, chain.cursor, now + 1), feat_init)
        chain.last, chain.cursor, chain.end = window, now, now + self.S - 1
        chain.guesses = [window.tracks[-1]]

    def _estimate(self, chain: _Chain, now: int) -> _Window:
        """A provisional window ending at `now`: over the last `provisional` frames of the window under way,
        from the best estimate at its first frame with zero velocity."""
        if chain.cursor == now:  # its window just completed: that window's last frame is the estimate
            return chain.last
        start = max(chain.cursor, now - self.provisional + 1)
        L = now + 1 - start
        if chain.last is not None:
            feat_init = chain.last.feats
        elif start == chain.first:
            feat_init = None
        else:  # the first window's templates, sampled by its first estimate (which started at its frame)
            feat_init = (chain.templates.expand(-1, L, -1, -1),) * 3
        window = self._run(start, now + 1, chain.guesses[start - chain.cursor].expand(L, -1, -1), feat_init)
        if chain.last is None and chain.templates is None:
            chain.templates = window.feats[0][:, :1]
        chain.guesses.append(window.tracks[-1])
        return window

    def _collect(self, frames: range, windows: list[list[_Window | None]]) -> TrackFrames:
        """Every point's tracks at `frames` (see _chain_frames) in stream pixels, as numpy arrays."""
        F, N = len(frames), self.num_points
        fields = [torch.full((F, N, 2), float("nan"))]
        fields += [torch.full((F, N), float("nan")) if self.has_head else None for _ in range(2)]
        for chain, runs in zip(self._chains, windows, strict=True):
            for field_all, field_chain in zip(fields, self._chain_frames(chain, runs, frames), strict=True):
                if field_all is not None:
                    field_all[:, chain.ids] = field_chain
        numbers = np.arange(frames.start, frames.stop, dtype=np.int64)
        return TrackFrames(numbers, *(None if x is None else x.numpy() for x in fields))

    def _chain_frames(self, chain: _Chain, runs: list[_Window | None], frames: range) -> list[torch.Tensor]:
        """A chain's tracks F,n,2 and visibility and confidence F,n at `frames`, from its windows in order (a
        later one replaces an earlier one where both hold a frame; a point's own position at its first frame
        where none does), NaN before each point's first frame."""
        F, n = len(frames), len(chain.ids)
        tracks = torch.full((F, n, 2), float("nan"))
        vis, conf = torch.full((F, n), float("nan")), torch.full((F, n), float("nan"))
        if chain.first in frames:
            tracks[chain.first - frames.start] = chain.xy.float().cpu() / self._scale
        for w in (w for w in runs if w is not None):
            lo, hi = max(frames.start, w.start), min(frames.stop, w.start + len(w.tracks))
            if lo >= hi:
                continue
            rows, src = slice(lo - frames.start, hi - frames.start), slice(lo - w.start, hi - w.start)
            cols = slice(None) if w.columns is None else torch.as_tensor(w.columns)
            tracks[rows, cols] = w.tracks[src].cpu() / self._scale
            for out, logits in ((vis, w.vis), (conf, w.conf)):
                if logits is not None:
                    out[rows, cols] = torch.sigmoid(logits[src]).cpu()
        before = torch.arange(frames.start, frames.stop)[:, None] < torch.tensor(chain.firsts)  # F,n
        for out in (tracks, vis, conf):
            out[before] = float("nan")
        return [tracks, vis, conf]
