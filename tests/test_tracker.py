import pytest
import torch

from nets.pips2 import Pips, PipsOutput
from nets.tracker import track, track_from_first_frame


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

    def forward(self, trajs_e0, rgbs, iters=3, feat_init=None, beautify=False) -> PipsOutput:
        stamps = rgbs[:, :, 0, 0, 0]  # B,S global frame index
        self.calls.append((int(stamps[0, 0]), feat_init is not None))
        coords = trajs_e0.clone()
        coords[..., 0] = trajs_e0[:, :1, :, 0] + (stamps - stamps[:, :1])[..., None]
        B, S, N, _ = trajs_e0.shape
        feats = tuple(torch.zeros(B, S, N, 4) for _ in range(3))
        return PipsOutput(coords, [coords], feats, [coords])


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


class ClockHeadModel(ClockModel):
    """ClockModel with a visibility head whose logits are each frame's global index (and minus it)."""

    def forward(self, trajs_e0, rgbs, iters=3, feat_init=None, beautify=False) -> PipsOutput:
        out = super().forward(trajs_e0, rgbs, iters, feat_init, beautify)
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
