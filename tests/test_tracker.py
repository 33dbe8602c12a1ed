import pytest
import torch

from nets.pips2 import Pips, PipsOutput
from nets.tracker import ResizedFrames, TensorFrames, resize_frames, track, track_from_first_frame


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
        return PipsOutput([coords], [coords], feats)


def clock_video(B: int, T: int) -> torch.Tensor:
    return torch.arange(T, dtype=torch.float32).view(1, T, 1, 1, 1).expand(B, T, 3, 4, 4).clone()


@pytest.mark.parametrize("T,S,starts", [(10, 4, [0, 3, 6]), (11, 4, [0, 3, 6, 7]), (3, 8, [0])])
def test_windows_overlap_by_one_and_last_is_shifted_back(T: int, S: int, starts: list[int]) -> None:
    model = ClockModel()
    xy = torch.tensor([[[5.0, 2.0]]])
    out = track_from_first_frame(model, TensorFrames(clock_video(1, T)), xy, S=S, iters=1)
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
    tracks = track(ClockModel(), TensorFrames(clock_video(2, T)), queries, S=5, iters=1)
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
    tracks = track_from_first_frame(model, TensorFrames(video), xy, S=8, iters=2)
    with torch.no_grad():
        direct = model(xy[:, None].repeat(1, 6, 1, 1), video, iters=2).coords[-1]
    torch.testing.assert_close(tracks, direct)


def test_resized_frames() -> None:
    video = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(1, 2, 3, 4, 6)
    assert resize_frames(video, (4, 6)) is video
    half = ResizedFrames(TensorFrames(video), (2, 3)).get(1, 2)  # 1,1,3,2,3
    assert half.shape == (1, 1, 3, 2, 3)
    torch.testing.assert_close(half[0, 0, 0, 0, 0], video[0, 1, 0, :2, :2].mean())  # 2x2 box, no corners
