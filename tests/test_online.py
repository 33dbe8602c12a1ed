"""OnlineTracker: streamed tracks equal PipsTracker's forward tracks, final S-1 frames behind, except where
its docstring says; a stub model checks the bookkeeping over hundreds of pushes in little time."""

import numpy as np
import pytest
import torch

from nets.pips2 import Pips, PipsOutput
from tests.test_api_golden import DAMPING, golden_video
from tracking import PipsTracker
from tracking.online import OnlineTracker, Step, TrackFrames


def damped_tracker(S: int, vis_head: bool = False) -> PipsTracker:
    """The seeded random model of the API golden test (updates damped), optionally with a visibility head."""
    torch.manual_seed(0)
    model = Pips(vis_head=vis_head)
    with torch.no_grad():
        model.delta_block.dense.weight.mul_(DAMPING)
        model.delta_block.dense.bias.mul_(DAMPING)
    return PipsTracker(model, S=S, iters=1, image_size=(64, 64))


class ShiftModel(torch.nn.Module):
    """Stands in for Pips: each frame's pixels hold its index (channel 0 + 256 x channel 1), and a point moves
    +1 px in x per frame from the window's first frame, so every track is x0 + (t - t0). Records each call's
    first frame and length."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, int]] = []

    def forward(self, trajs_e0, rgbs, iters=1, feat_init=None) -> PipsOutput:
        B, S, N, _ = trajs_e0.shape
        stamps = rgbs[:, :, 0, 0, 0] + 256 * rgbs[:, :, 1, 0, 0]  # B,S frame indices
        self.calls.append((int(stamps[0, 0]), S))
        tracks = trajs_e0[:, :1].repeat(1, S, 1, 1)  # B,S,N,2
        tracks[..., 0] += (stamps - stamps[:, :1])[..., None]
        feats = tuple(torch.zeros(B, S, N, 4) for _ in range(3))
        return PipsOutput(tracks, [tracks], feats)


def stamped_frame(t: int, H: int = 64, W: int = 64) -> np.ndarray:
    frame = np.zeros((H, W, 3), np.uint8)
    frame[..., 0], frame[..., 1] = t % 256, t // 256
    return frame


def run(online: OnlineTracker, video, points: dict[int, np.ndarray]) -> list[Step]:
    """Push every frame, adding points[t] once frame t is in, then flush."""
    steps = []
    for t, frame in enumerate(video):
        steps.append(online.push(frame))
        if t in points:
            online.add_queries(points[t])
    return steps + [online.flush()]


def joined(parts: list[TrackFrames], N: int) -> TrackFrames:
    """Consecutive outputs as one, padded with NaN to the N points of the last."""

    def pad(x: np.ndarray | None) -> np.ndarray | None:
        if x is None:
            return None
        return np.pad(x, [(0, 0), (0, N - x.shape[1])] + [(0, 0)] * (x.ndim - 2), constant_values=np.nan)

    def pad_all(xs: list[np.ndarray | None]) -> np.ndarray | None:
        return None if xs[0] is None else np.concatenate([pad(x) for x in xs])

    fields = [pad_all([getattr(p, name) for p in parts]) for name in ("tracks", "visibility")]
    return TrackFrames(np.concatenate([p.frames for p in parts]), fields[0], fields[1], None)


def test_streamed_tracks_equal_the_offline_forward_tracks() -> None:
    # T=9, S=4: the frame-0 points' windows [0,4), [3,7) and the last one shifted back to [5,9); those of
    # frame 2 end on a window boundary ([2,6), [5,9)); frame 7's fit in one short window, and a point of the
    # last frame is only its query
    video = golden_video(T=9)
    points = {0: [[10.0, 12.0], [60.5, 40.0]], 2: [[30.0, 30.0]], 7: [[50.0, 36.0]], 8: [[5.0, 5.0]]}
    tracker = damped_tracker(S=4, vis_head=True)
    online = OnlineTracker(tracker)
    steps = run(online, video, {t: np.array(p) for t, p in points.items()})
    assert [s.final.frames.tolist() for s in steps[:-1]] == [[]] * 3 + [[f] for f in range(6)]
    assert steps[-1].final.frames.tolist() == [6, 7, 8] and all(s.provisional is None for s in steps)
    out = joined([s.final for s in steps], 5)
    first = np.array([0, 0, 2, 7, 8])  # each point's frame
    before = np.arange(9)[:, None] < first  # T,N
    assert np.isnan(out.tracks[before]).all() and np.isnan(out.visibility[before]).all()
    np.testing.assert_array_equal(out.tracks[8, 4], points[8][0])
    assert np.isnan(out.visibility[8, 4])  # no window reaches it
    columns = {0: [0, 1], 2: [2], 7: [3]}
    for t, n in columns.items():
        offline = tracker.predict(video[t:], queries=np.c_[np.zeros(len(n)), points[t]])  # forward from t
        np.testing.assert_allclose(out.tracks[t:, n], offline.tracks, atol=1e-4, rtol=0)
        # visibility too, but at frame T-S=5 for the frame-0 points: offline their last window starts there
        same = np.arange(t, 9) != 5 if t == 0 else slice(None)
        np.testing.assert_allclose(out.visibility[t:, n][same], offline.visibility[same], atol=1e-5, rtol=0)
        if t == 0:
            assert (np.abs(out.visibility[5, n] - offline.visibility[5 - t]) > 1e-6).all()


def test_visibility_at_a_later_query_frame_comes_from_the_forward_window() -> None:
    video = golden_video(T=5)
    tracker = damped_tracker(S=4, vis_head=True)
    offline = tracker.predict(video, queries=[[2, 30.0, 30.0]])  # frame 2's visibility: the backward pass
    online = OnlineTracker(tracker)
    out = joined([s.final for s in run(online, video, {2: np.array([[30.0, 30.0]])})], 1)
    np.testing.assert_allclose(out.tracks[2:], offline.tracks[2:], atol=1e-4, rtol=0)
    np.testing.assert_allclose(out.visibility[3:], offline.visibility[3:], atol=1e-5, rtol=0)
    assert abs(out.visibility[2, 0] - offline.visibility[2, 0]) > 1e-6
    forward = tracker.predict(video[2:], queries=[[0, 30.0, 30.0]])
    np.testing.assert_allclose(out.visibility[2], forward.visibility[0], atol=1e-5, rtol=0)


def test_provisional_estimates_and_unchanged_final_tracks() -> None:
    # T=9, S=4: the windows [0,4) and [2,6) complete before the last windows ([5,9)) start
    video = golden_video(T=9)
    points = {0: np.array([[10.0, 12.0]]), 2: np.array([[30.0, 30.0]])}
    tracker = damped_tracker(S=4)
    with_estimates = run(OnlineTracker(tracker, provisional=4), video, points)
    without = run(OnlineTracker(tracker), video, points)
    for a, b in zip(with_estimates, without, strict=True):
        np.testing.assert_array_equal(a.final.tracks, b.final.tracks)
    estimates = joined([s.provisional for s in with_estimates[:-1]], 2)
    assert estimates.frames.tolist() == list(range(9))
    assert np.isnan(estimates.tracks[0]).all() and np.isnan(estimates.tracks[:3, 1]).all()
    # within a chain's first window the estimate is the offline tracks of the frames so far
    for t, now in ((0, 1), (0, 2), (2, 4)):
        so_far = tracker(video[t : now + 1], queries=np.c_[np.zeros(1), points[t]])
        np.testing.assert_allclose(estimates.tracks[now, t // 2], so_far[-1, 0], atol=1e-4, rtol=0)
    # a completed window's last frame: the estimate is that window's, the final tracks of the frame
    final = joined([s.final for s in without], 2)
    np.testing.assert_array_equal(estimates.tracks[3, 0], final.tracks[3, 0])
    np.testing.assert_array_equal(estimates.tracks[5, 1], final.tracks[5, 1])


def test_short_provisional_windows_anchor_at_earlier_estimates() -> None:
    model = ShiftModel()
    online = OnlineTracker(PipsTracker(model, S=8, iters=1, image_size=(64, 64)), provisional=3)
    steps = run(online, (stamped_frame(t) for t in range(30)), {2: np.array([[10.0, 20.0]])})
    estimates = [s.provisional for s in steps[3:-1]]  # frames 3..29
    x = np.concatenate([e.tracks[:, 0, 0] for e in estimates])
    np.testing.assert_array_equal(x, 10.0 + np.arange(3, 30) - 2)
    windows = [S for start, S in model.calls]
    assert max(windows) == 8 and set(windows) == {2, 3, 8}  # provisional windows of at most 3 frames


def test_kept_frames_stay_bounded_and_tracks_stay_right() -> None:
    model = ShiftModel()
    S = 5
    online = OnlineTracker(PipsTracker(model, S=S, iters=1, image_size=(64, 64)))
    points = {0: np.array([[3.0, 4.0]]), 50: np.array([[10.0, 10.0]]), 123: np.array([[1.0, 60.0]])}
    held, finals = [], []
    for t in range(400):
        step = online.push(stamped_frame(t))
        held.append(online.frames_held)
        finals.append(step.final)
        if t in points:
            ids = online.add_queries(points[t])
            assert ids.tolist() == [sorted(points).index(t)]
    assert held[:S] == list(range(1, S + 1)) and set(held[S:]) == {S}
    last = online.flush().final
    assert last.frames.tolist() == list(range(400 - S + 1, 400))
    out = joined(finals + [last], 3)
    assert out.frames.tolist() == list(range(400))
    for n, (t0, xy) in enumerate(sorted(points.items())):
        np.testing.assert_array_equal(out.tracks[t0:, n, 0], xy[0, 0] + np.arange(400 - t0))
        np.testing.assert_array_equal(out.tracks[t0:, n, 1], xy[0, 1])
        assert np.isnan(out.tracks[:t0, n]).all()
    # one chain of windows per query frame: a window of S frames every S-1 frames each
    assert len(model.calls) == sum(-(-(400 - t0 - 1) // (S - 1)) for t0 in points)


def test_points_added_at_one_frame_share_its_windows() -> None:
    model = ShiftModel()
    online = OnlineTracker(PipsTracker(model, S=4, iters=1, image_size=(64, 64)))
    online.push(stamped_frame(0))
    assert online.add_queries([[1.0, 2.0]]).tolist() == [0]
    assert online.add_queries([[5.0, 6.0], [7.0, 8.0]]).tolist() == [1, 2]
    for t in range(1, 4):
        step = online.push(stamped_frame(t))
    assert model.calls == [(0, 4)] and step.final.tracks.shape == (1, 3, 2)
    np.testing.assert_array_equal(step.final.tracks[0], [[1, 2], [5, 6], [7, 8]])


def test_bad_frames_and_points_are_named_and_leave_the_stream_going() -> None:
    tracker = PipsTracker(ShiftModel(), S=4, iters=1, image_size=(64, 64))
    with pytest.raises(ValueError, match="provisional must be 0 or 2..S=4"):
        OnlineTracker(tracker, provisional=5)
    online = OnlineTracker(tracker)
    with pytest.raises(ValueError, match="push a frame first"):
        online.add_queries([[1.0, 1.0]])
    with pytest.raises(ValueError, match=r"frame 0 must be H,W,3 uint8 RGB, got \(64, 64, 3\) float32"):
        online.push(np.zeros((64, 64, 3), np.float32))
    online.push(stamped_frame(0, H=64, W=80))
    with pytest.raises(ValueError, match=r"frame 1 is 64x48, unlike the stream's first frame \(80x64\)"):
        online.push(stamped_frame(1, H=48, W=64))
    with pytest.raises(ValueError, match="lies outside the 80x64 frame"):
        online.add_queries([[80.0, 3.0]])
    with pytest.raises(ValueError, match=r"points must be N,2 rows of x,y \(N >= 1\), got shape \(3,\)"):
        online.add_queries([1.0, 2.0, 3.0])
    online.add_queries([[79.0, 63.0]])
    online.push(stamped_frame(1, H=64, W=80))
    assert online.flush().final.frames.tolist() == [0, 1]
    with pytest.raises(ValueError, match="the stream has ended"):
        online.push(stamped_frame(2, H=64, W=80))


def test_joining_points_share_the_first_points_windows() -> None:
    # S=4, T=11: the frame-0 point's windows [0,4), [3,7), [6,10); points of frames 1, 5 and 8 join them
    # after a short window to their end, the frame-9 point (a window boundary) would join after a full one
    model = ShiftModel()
    online = OnlineTracker(PipsTracker(model, S=4, iters=1, image_size=(64, 64)), join=True)
    points = {t: np.array([[2.0 * t, 1.0 + t]]) for t in (0, 1, 5, 8, 9)}
    steps = run(online, (stamped_frame(t) for t in range(11)), points)
    # the stream ends off a boundary: the last windows start at T-S=7, or at a later point's own frame
    assert model.calls == [(0, 4), (1, 3), (3, 4), (5, 2), (6, 4), (8, 2), (7, 4), (8, 3), (9, 2)]
    out = joined([s.final for s in steps], 5)
    assert out.frames.tolist() == list(range(11))
    for n, (t0, xy) in enumerate(points.items()):
        np.testing.assert_array_equal(out.tracks[t0:, n], xy + [[t, 0] for t in range(11 - t0)])
        assert np.isnan(out.tracks[:t0, n]).all()


def test_joining_points_differ_from_offline_after_their_short_window() -> None:
    video = golden_video(T=9)
    tracker = damped_tracker(S=4)
    points = {0: np.array([[10.0, 12.0]]), 1: np.array([[60.5, 40.0]]), 3: np.array([[30.0, 30.0]])}
    out = joined([s.final for s in run(OnlineTracker(tracker, join=True), video, points)], 3)

    def offline(t: int, end: int = 9) -> np.ndarray:
        return tracker(video[t:end], queries=np.c_[np.zeros(1), points[t]])[:, 0]

    # points run in one window with others round differently (about 1e-4 px here), and the random weights
    # amplify that over windows
    np.testing.assert_allclose(out.tracks[:, 0], offline(0), atol=1e-3, rtol=0)  # unchanged by the others
    np.testing.assert_allclose(out.tracks[3:, 2], offline(3), atol=1e-3, rtol=0)  # joined at a boundary
    # frame 1's point: its first window is [1,4), where offline's is [1,5)
    np.testing.assert_allclose(out.tracks[1:4, 1], offline(1, end=4), atol=1e-4, rtol=0)
    assert np.isfinite(out.tracks[1:, 1]).all() and np.abs(out.tracks[1:, 1] - offline(1)).max() > 1e-3
