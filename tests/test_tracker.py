import pytest
import torch

from nets.pips2 import Pips, PipsOutput
from nets.tracker import TrackingInterrupted, track, track_from_first_frame


class TensorFrames:
    """A batch of videos B,T,3,H,W in memory as a FrameSource; `ends_at` makes the video end early there
    (as a truncated file does) and `reads` records the windows asked for."""

    def __init__(self, video: torch.Tensor, ends_at: int | None = None) -> None:
        self.video = video
        self.num_frames = video.shape[1]
        self.ends_at = ends_at
        self.reads: list[tuple[int, int]] = []

    def get(self, start: int, end: int) -> torch.Tensor:
        self.reads.append((start, end))
        if self.ends_at is not None and end > self.ends_at:
            self.num_frames = self.ends_at
        return self.video[:, start : min(end, self.num_frames)]


class ClockModel(torch.nn.Module):
    """Stands in for Pips: every frame's pixels hold its global frame index, and a point moves +1 px in x
    per frame. Records the windows it is called on."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, bool]] = []

    def forward(self, trajs_e0, rgbs, iters=3, feat_init=None) -> PipsOutput:
        stamps = rgbs[:, :, 0, 0, 0]  # B,S global frame index
        self.calls.append((int(stamps[0, 0]), feat_init is not None))
        coords = trajs_e0.clone()
        coords[..., 0] = trajs_e0[:, :1, :, 0] + (stamps - stamps[:, :1])[..., None]
        B, S, N, _ = trajs_e0.shape
        feats = tuple(torch.zeros(B, S, N, 4) for _ in range(3))
        return PipsOutput(coords, [coords], feats)


def clock_video(B: int, T: int) -> torch.Tensor:
    return torch.arange(T, dtype=torch.float32).view(1, T, 1, 1, 1).expand(B, T, 3, 4, 4).clone()


@pytest.mark.parametrize("T,S,starts", [(10, 4, [0, 3, 6]), (11, 4, [0, 3, 6, 7]), (3, 8, [0])])
def test_windows_overlap_by_one_and_last_is_shifted_back(T: int, S: int, starts: list[int]) -> None:
    model = ClockModel()
    xy = torch.tensor([[[5.0, 2.0]]])
    out = track_from_first_frame(model, TensorFrames(clock_video(1, T)), xy, S=S, iters=1).tracks
    assert [c[0] for c in model.calls] == starts
    assert [c[1] for c in model.calls] == [False] + [True] * (len(starts) - 1)
    torch.testing.assert_close(out[0, :, 0, 0], 5.0 + torch.arange(T, dtype=torch.float32))


class InitRecorder(ClockModel):
    """ClockModel that also records the initial tracks of every window."""

    def __init__(self) -> None:
        super().__init__()
        self.inits: list[torch.Tensor] = []

    def forward(self, trajs_e0, rgbs, iters=3, feat_init=None) -> PipsOutput:
        self.inits.append(trajs_e0.clone())
        return super().forward(trajs_e0, rgbs, iters, feat_init)


def test_later_windows_start_from_the_last_estimate_with_zero_velocity() -> None:
    # T=11, S=4: windows [0,4), [3,7), [6,10) and [7,11) shifted back; the point moves +1 px/frame from x=5.
    # The first window ends at x=8 (frame 3), the second at 11 (frame 6): each later window starts still
    # there. The last one starts from the estimates 12, 13, 14 of frames 7..9 and 14 again at frame 10
    model = InitRecorder()
    xy = torch.tensor([[[5.0, 2.0]]])
    track_from_first_frame(model, TensorFrames(clock_video(1, 11)), xy, S=4, iters=1)
    expected = [[5, 5, 5, 5], [8, 8, 8, 8], [11, 11, 11, 11], [12, 13, 14, 14]]
    assert len(model.inits) == len(expected)
    for init, x in zip(model.inits, expected, strict=True):
        torch.testing.assert_close(init[0, :, 0], torch.tensor([[float(v), 2.0] for v in x]))


def test_queries_at_middle_frames_are_tracked_backward_and_forward() -> None:
    T = 13
    queries = torch.tensor(
        [
            [[6.0, 20.0, 3.0], [0.0, 10.0, 1.0], [12.0, 40.0, 2.0]],
            [[6.0, 30.0, 4.0], [6.0, 31.0, 5.0], [2.0, 7.0, 7.0]],
        ]
    )
    tracks = track(ClockModel(), TensorFrames(clock_video(2, T)), queries, S=5, iters=1).tracks
    assert tracks.shape == (2, T, 3, 2)
    t = torch.arange(T, dtype=torch.float32)
    for b in range(2):
        for n in range(3):
            tq, x, y = queries[b, n].tolist()
            torch.testing.assert_close(tracks[b, :, n, 0], x + t - tq)  # before and after the query frame
            torch.testing.assert_close(tracks[b, :, n, 1], torch.full((T,), y))


def test_query_frame_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"query frames must lie in \[0, 4\]"):
        track(ClockModel(), TensorFrames(clock_video(1, 5)), torch.tensor([[[5.0, 1.0, 1.0]]]))


def test_single_window_equals_one_model_call() -> None:
    torch.manual_seed(0)
    model = Pips().eval()
    video = torch.rand(1, 6, 3, 64, 64) * 255
    xy = torch.rand(1, 5, 2) * 63
    tracks = track_from_first_frame(model, TensorFrames(video), xy, S=8, iters=2).tracks
    with torch.no_grad():
        direct = model(xy[:, None].repeat(1, 6, 1, 1), video, iters=2).tracks
    torch.testing.assert_close(tracks, direct)


def test_a_video_that_ends_early_is_tracked_through_the_frames_it_has() -> None:
    model = ClockModel()
    source = TensorFrames(clock_video(1, 20), ends_at=13)
    out = track_from_first_frame(model, source, torch.tensor([[[5.0, 2.0]]]), S=6, iters=1).tracks
    assert out.shape == (1, 13, 1, 2)
    assert [c[0] for c in model.calls] == [0, 5, 7]  # the last window is laid out again to end at 13
    torch.testing.assert_close(out[0, :, 0, 0], 5.0 + torch.arange(13, dtype=torch.float32))
    queries = torch.tensor([[[0.0, 1.0, 1.0], [16.0, 2.0, 2.0]]])
    with pytest.raises(ValueError, match="a query at frame 16 lies past the 13 readable frames"):
        track(ClockModel(), TensorFrames(clock_video(1, 20), ends_at=13), queries, S=6, iters=1)
    tracks = track(
        ClockModel(), TensorFrames(clock_video(1, 20), ends_at=13), queries[:, :1], S=6, iters=1
    ).tracks
    assert tracks.shape == (1, 13, 1, 2)


def test_progress_counts_the_frames_of_both_passes() -> None:
    steps: list[int] = []
    queries = torch.tensor([[[0.0, 1.0, 1.0], [7.0, 2.0, 2.0], [11.0, 3.0, 3.0]]])
    track(ClockModel(), TensorFrames(clock_video(1, 12)), queries, S=4, iters=1, progress=steps.append)
    assert sum(steps) == 11 * 3 and all(s > 0 for s in steps)


class MemoryModel(torch.nn.Module):
    """Stands in for Pips, with an output that depends on everything a window is given.

    Frames hold their global index (clock_video). The comments in forward state its rules.
    """

    def forward(self, trajs_e0, rgbs, iters=3, feat_init=None) -> PipsOutput:
        B, S, N, _ = trajs_e0.shape
        stamps = rgbs[:, :, 0, 0, 0]  # B,S global frame index
        first, last = stamps[:, 0], stamps[:, -1]  # B

        def template(value: torch.Tensor) -> torch.Tensor:
            return value.view(B, 1, 1, 1).expand(B, S, N, 1)  # B,S,N,1

        # Every frame but the window's first moves +1 px in x from its initial position.
        coords = trajs_e0.clone()
        coords[:, 1:, :, 0] += 1
        # Those frames also move in y by feats1 + feats2 / 100 + feats4 / 10000 of the templates passed in.
        if feat_init is not None:
            f1, f2, f4 = (f[:, :S, :, 0] for f in feat_init)  # B,S,N each
            coords[:, 1:, :, 1] += (f1 + f2 / 100 + f4 / 10000)[:, 1:]
        # The returned templates follow Pips: feats1 is kept from feat_init, else 1 + the first frame index.
        feats1 = feat_init[0][:, :S] if feat_init is not None else template(first + 1)
        # feats2 is 1 + the window's first frame index and feats4 is 1 + its last.
        feats = (feats1, template(first + 1), template(last + 1))
        # The visibility logits are the frame index plus 1/100 of the window's first; conf is their negative.
        vis = (stamps + first[:, None] / 100)[..., None].expand(B, S, N)  # B,S,N
        return PipsOutput(coords, [coords], feats, vis=vis, conf=-vis)


def test_each_window_starts_from_the_previous_tracks_and_templates() -> None:
    # T=10, S=4: windows [0,4), [3,7), [6,10), worked through by hand (MemoryModel's rules)
    xy = torch.tensor([[[5.0, 2.0], [7.0, 1.0]]])
    out = track_from_first_frame(MemoryModel(), TensorFrames(clock_video(1, 10)), xy, S=4, iters=1)
    dx = torch.tensor([0, 1, 1, 1, 2, 2, 2, 3, 3, 3], dtype=torch.float32)
    # window [3,7) reads the templates of [0,4): 1 + 1/100 + 4/10000; window [6,10) those of [3,7) with the
    # first window's feats1: 1 + 4/100 + 7/10000, on top of the y it starts from
    dy = torch.tensor([0, 0, 0, 0] + [1.0104] * 3 + [1.0104 + 1.0407] * 3)
    for n in range(2):
        torch.testing.assert_close(out.tracks[0, :, n, 0], xy[0, n, 0] + dx)
        torch.testing.assert_close(out.tracks[0, :, n, 1], xy[0, n, 1] + dy)
    # where windows overlap, the later window's logits stand
    vis = torch.arange(10, dtype=torch.float32) + torch.tensor([0.0] * 3 + [0.03] * 3 + [0.06] * 4)
    torch.testing.assert_close(out.vis[0], vis[:, None].expand(10, 2))
    torch.testing.assert_close(out.conf, -out.vis)


def test_backward_tracks_and_logits_are_put_back_in_time_order() -> None:
    # a query at frame 5 of 9: the forward pass covers frames 5..8, the backward pass 5..0 on reversed frames
    # and queries at the first and the last frame, where one pass covers a single frame and calls no model
    queries = torch.tensor([[[5.0, 20.0, 3.0], [0.0, 10.0, 4.0], [8.0, 30.0, 5.0]]])
    out = track(MemoryModel(), TensorFrames(clock_video(1, 9)), queries, S=3, iters=1)
    # x moves +1 per window away from the query: forward windows run over frames 5..7 and 6..8, backward
    # windows (local frames [0,3), [2,5), [3,6)) over frames 5..3, 3..1 and 2..0
    x = torch.tensor([23.0, 23.0, 22.0, 21.0, 21.0, 20.0, 21.0, 22.0, 22.0])
    torch.testing.assert_close(out.tracks[0, :, 0, 0], x)
    assert out.tracks[0, 5, 0].tolist() == [20.0, 3.0]
    # the logits hold the frame index (as read from the pixels) wherever a frame was tracked from
    torch.testing.assert_close(out.vis[0].round(), torch.arange(9, dtype=torch.float32)[:, None].expand(9, 3))
    torch.testing.assert_close(out.conf, -out.vis)
    at_start = track(MemoryModel(), TensorFrames(clock_video(1, 9)), queries[:, 1:2], S=3, iters=1)
    torch.testing.assert_close(at_start.vis, out.vis[:, :, 1:2])
    torch.testing.assert_close(at_start.tracks, out.tracks[:, :, 1:2])


class GradModel(ClockModel):
    """ClockModel whose output goes through a parameter, so that autograd would record it."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, trajs_e0, rgbs, iters=3, feat_init=None) -> PipsOutput:
        out = super().forward(trajs_e0, rgbs, iters, feat_init)
        return out._replace(tracks=out.tracks * self.scale)


def test_tracking_records_no_autograd_graph() -> None:
    queries = torch.tensor([[[0.0, 1.0, 1.0], [4.0, 2.0, 2.0]]], requires_grad=True)
    out = track(GradModel(), TensorFrames(clock_video(1, 7)), queries, S=3, iters=1)
    assert not out.tracks.requires_grad and out.vis is None and out.conf is None
    xy = torch.ones(1, 1, 2, requires_grad=True)
    out = track_from_first_frame(GradModel(), TensorFrames(clock_video(1, 7)), xy, S=3)
    assert not out.tracks.requires_grad


class ClockHeadModel(ClockModel):
    """ClockModel with a visibility head whose logits are each frame's global index (and minus it)."""

    def forward(self, trajs_e0, rgbs, iters=3, feat_init=None) -> PipsOutput:
        out = super().forward(trajs_e0, rgbs, iters, feat_init)
        stamps = rgbs[:, :, 0, 0, 0][..., None].expand(trajs_e0.shape[:3])  # B,S,N
        return out._replace(vis=stamps.clone(), conf=-stamps)


def test_head_logits_follow_their_frames_through_windows_and_backward_passes() -> None:
    T = 13
    queries = torch.tensor([[[0.0, 1.0, 1.0], [6.0, 2.0, 2.0], [12.0, 3.0, 3.0]]])
    out = track(ClockHeadModel(), TensorFrames(clock_video(1, T)), queries, S=4, iters=1)
    t = torch.arange(T, dtype=torch.float32)[None, :, None].expand(1, T, 3)
    torch.testing.assert_close(out.vis, t)
    torch.testing.assert_close(out.conf, -t)
    assert track(ClockModel(), TensorFrames(clock_video(1, T)), queries, S=4, iters=1).vis is None


class WindowLog(ClockModel):
    """ClockModel that also records each window's length and the iterations it is asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.windows: list[tuple[int, int]] = []

    def forward(self, trajs_e0, rgbs, iters=3, feat_init=None) -> PipsOutput:
        self.windows.append((rgbs.shape[1], iters))
        return super().forward(trajs_e0, rgbs, iters, feat_init)


def test_the_official_window_and_iterations_by_default() -> None:
    # 130 frames: windows [0, 128) and [2, 130) (the last one shifted back), 16 iterations each
    video = clock_video(1, 130)
    model = WindowLog()
    track_from_first_frame(model, TensorFrames(video), torch.tensor([[[1.0, 1.0]]]))
    assert model.windows == [(128, 16), (128, 16)] and [c[0] for c in model.calls] == [0, 2]
    model = WindowLog()
    tracks = track(model, TensorFrames(video), torch.tensor([[[129.0, 1.0, 1.0]]])).tracks
    # the query at the last frame: the forward pass covers it alone, the backward pass all 130 frames
    assert model.windows == [(128, 16), (128, 16)]
    torch.testing.assert_close(tracks[0, :, 0, 0], 1.0 - 129 + torch.arange(130, dtype=torch.float32))
    model = WindowLog()
    track(model, TensorFrames(clock_video(1, 9)), torch.tensor([[[4.0, 1.0, 1.0]]]), S=8, iters=5)
    assert model.windows == [(5, 5), (5, 5)]  # frames 4..8 forward and 4..0 backward, iters passed on


def test_the_shortest_window_and_video_are_two_frames() -> None:
    model = ClockModel()
    out = track_from_first_frame(model, TensorFrames(clock_video(1, 4)), torch.tensor([[[3.0, 1.0]]]), S=2)
    assert [c[0] for c in model.calls] == [0, 1, 2]  # windows [0, 2), [1, 3), [2, 4)
    torch.testing.assert_close(out.tracks[0, :, 0, 0], torch.tensor([3.0, 4.0, 5.0, 6.0]))
    model = ClockModel()
    out = track_from_first_frame(model, TensorFrames(clock_video(1, 2)), torch.tensor([[[3.0, 1.0]]]), S=4)
    assert [c[0] for c in model.calls] == [0]
    torch.testing.assert_close(out.tracks[0, :, 0, 0], torch.tensor([3.0, 4.0]))
    with pytest.raises(ValueError, match=r"^window length S must be at least 2, got 1$"):
        track_from_first_frame(model, TensorFrames(clock_video(1, 4)), torch.tensor([[[3.0, 1.0]]]), S=1)


def test_no_query_gives_empty_tracks() -> None:
    queries = torch.zeros(2, 0, 3)
    out = track(ClockModel(), TensorFrames(clock_video(2, 6)), queries, S=4, iters=1)
    assert out.tracks.shape == (2, 6, 0, 2) and out.tracks.dtype == torch.float32
    assert out.vis is None and out.conf is None


def test_a_query_at_the_first_frame_that_does_not_decode() -> None:
    queries = torch.tensor([[[0.0, 1.0, 1.0], [13.0, 2.0, 2.0]]])
    with pytest.raises(ValueError, match="^a query at frame 13 lies past the 13 readable frames$"):
        track(ClockModel(), TensorFrames(clock_video(1, 20), ends_at=13), queries, S=6, iters=1)


def test_progress_is_not_told_of_a_window_laid_out_again_over_tracked_frames() -> None:
    # the video ends right after the first window [0, 6): the window [5, 11) comes back short, and the window
    # laid out again ([0, 6)) covers no new frame
    steps: list[int] = []
    source = TensorFrames(clock_video(1, 20), ends_at=6)
    out = track_from_first_frame(
        ClockModel(), source, torch.zeros(1, 1, 2), S=6, iters=1, progress=steps.append
    )
    assert steps == [5] and out.tracks.shape == (1, 6, 1, 2)


class StoppedModel(ClockModel):
    """ClockModel until its call number `stop_at` (from 0), which meets Ctrl-C."""

    def __init__(self, stop_at: int) -> None:
        super().__init__()
        self.stop_at = stop_at

    def forward(self, *args, **kwargs) -> PipsOutput:
        if len(self.calls) == self.stop_at:
            raise KeyboardInterrupt
        return super().forward(*args, **kwargs)


@pytest.mark.parametrize(
    "stop_at,frames,tracked",
    [
        (0, 1, [True, False]),  # before any window: frame 0, the query frame, only
        (2, 7, [True, False]),  # in the third window of the pass from frame 0: frames 0..6 done
        (4, 10, [True, False]),  # in the forward pass from frame 5: the frame-0 point is done
        (5, 10, [True, False]),  # in the backward pass from frame 5
    ],
)
def test_ctrl_c_gives_the_frames_done_and_nan_for_points_not_yet_tracked(stop_at, frames, tracked) -> None:
    # T=10, S=4: the pass from frame 0 is calls 0, 1, 2 (windows at 0, 3, 6); the point at frame 5 runs
    # forward over frames 5..9 (calls 3, 4) and backward over 5..0 (calls 5, 6)
    queries = torch.tensor([[[0.0, 5.0, 2.0], [5.0, 7.0, 1.0]]])
    with pytest.raises(TrackingInterrupted) as stop:
        track(StoppedModel(stop_at), TensorFrames(clock_video(1, 10)), queries, S=4, iters=1)
    tracks = stop.value.partial.tracks  # 1,T',2,2
    assert tracks.shape == (1, frames, 2, 2)
    assert [bool(torch.isfinite(tracks[0, :, n]).all()) for n in range(2)] == tracked
    assert not torch.isfinite(tracks[0, :, 1]).any()
    torch.testing.assert_close(tracks[0, :, 0, 0], 5.0 + torch.arange(frames, dtype=torch.float32))
