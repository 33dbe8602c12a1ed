
import numpy as np
import pytest
import torch

from nets.pips2 import Pips, PipsOutput
from tracking.frames import VideoFileFrames
from tracking.predictor import PipsTracker, check_queries, grid_queries
from utils.checkpoint import save
from utils.video import read_frames, write_video


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class ShiftModel(torch.nn.Module):
    """Stands in for Pips: moves every frame but the first by (dx, dy) model pixels, and records the
    frame sizes it is given."""

    def __init__(self, dx: float = 0.0, dy: float = 0.0) -> None:
        super().__init__()
        self.shift = torch.tensor([dx, dy])
        self.frame_sizes: set[tuple[int, int]] = set()
        self.calls = 0

    def forward(self, trajs_e0, rgbs, iters=3, feat_init=None, beautify=False) -> PipsOutput:
        self.frame_sizes.add(tuple(rgbs.shape[-2:]))
        self.calls += 1
        coords = trajs_e0.clone()
        coords[:, 1:] += self.shift
        B, S, N, _ = trajs_e0.shape
        feats = tuple(torch.zeros(B, S, N, 4) for _ in range(3))
        return PipsOutput(coords, [coords], feats, [coords])


class BrightnessModel(ShiftModel):
    """Moves points by each frame's mean brightness at the model's resolution, so the tracks change if
    any frame reaching the model differs (decoding, resizing, time order)."""

    def forward(self, trajs_e0, rgbs, iters=3, feat_init=None, beautify=False) -> PipsOutput:
        out = super().forward(trajs_e0, rgbs, iters, feat_init, beautify)
        coords = out.tracks + rgbs.mean(dim=(2, 3, 4))[:, :, None, None] / 50  # B,S,N,2
        coords[:, 0] = trajs_e0[:, 0]
        return PipsOutput(coords, [coords], out.feats, [coords])


def textured_video(T: int = 24, H: int = 96, W: int = 128) -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    frames = [np.stack([(2 * xx + 3 * t) % 256, 2 * yy % 256, (xx + yy + 5 * t) % 256], -1) for t in range(T)]
    return np.stack(frames).astype(np.uint8)  # T,H,W,3


def test_numpy_tensor_and_path_inputs_give_the_same_tracks(tmp_path) -> None:
    path = tmp_path / "clip.mp4"
    write_video(path, textured_video(T=12), fps=10)
    frames = read_frames(path)  # the decoded frames, exactly what the path input sees
    tracker = PipsTracker(BrightnessModel(), S=5, iters=1, image_size=(64, 96))
    queries = np.array([[0, 10.0, 20.0], [6, 50.5, 40.0], [6, 120.0, 90.0]], np.float32)
    from_numpy = tracker(frames, queries=queries)
    from_tensor = tracker(torch.from_numpy(frames), queries=torch.from_numpy(queries))
    from_path = tracker(path, queries=queries)
    assert isinstance(from_numpy, np.ndarray) and isinstance(from_path, np.ndarray)
    assert isinstance(from_tensor, torch.Tensor) and from_numpy.shape == (12, 3, 2)
    np.testing.assert_array_equal(from_numpy, from_tensor.numpy())
    np.testing.assert_array_equal(from_numpy, from_path)
    np.testing.assert_allclose(from_numpy[[0, 6, 6], [0, 1, 2]], queries[:, 1:], atol=1e-4)
    assert np.abs(from_numpy - queries[None, :, 1:]).min(axis=(1, 2))[[1, 5, 7, 11]].min() > 1  # they moved


def test_tracks_come_back_in_input_pixels() -> None:
    video = np.zeros((12, 96, 128, 3), np.uint8)
    model = ShiftModel(dx=1.0, dy=2.0)
    tracker = PipsTracker(model, S=12, iters=1, image_size=(48, 32))  # x scaled by 1/4, y by 1/2
    queries = np.array([[0, 10.0, 20.0], [5, 100.0, 60.0]], np.float32)
    tracks = tracker(video, queries=queries)
    assert model.frame_sizes == {(48, 32)}
    expected = np.repeat(queries[None, :, 1:], 12, axis=0) + np.array([4.0, 4.0], np.float32)  # T,N,2
    expected[0, 0] = queries[0, 1:]  # each track sits on its query at the query frame
    expected[5, 1] = queries[1, 1:]
    np.testing.assert_array_equal(tracks, expected)


def test_grid_is_the_official_grid_scaled_to_the_input() -> None:
    grid = grid_queries(3, H=96, W=128, image_size=(48, 64))  # margin 8 model px = 16 px here
    xs, ys = [16.0, 64.0, 112.0], [16.0, 48.0, 80.0]
    expected = [[0.0, x, y] for y in ys for x in xs]
    torch.testing.assert_close(grid, torch.tensor(expected))
    official = 8 + torch.arange(3) / 2 * (64 - 16)  # x = 8 + i/(g-1)*(W'-16) at the model resolution
    torch.testing.assert_close(grid[:3, 1] * 64 / 128, official)
    torch.testing.assert_close(grid_queries(1, 96, 128), torch.tensor([[0.0, 64.0, 48.0]]))
    tracks = PipsTracker(ShiftModel(), S=8, iters=1, image_size=(48, 64))(
        torch.zeros(5, 96, 128, 3, dtype=torch.uint8), grid_size=3
    )
    assert tracks.shape == (5, 9, 2)
    torch.testing.assert_close(tracks[0], grid[:, 1:])


def test_file_frames_hold_one_window_and_decode_each_frame_once(tmp_path) -> None:
    path = tmp_path / "clip.mp4"
    write_video(path, textured_video(T=30, H=32, W=32))
    held, sources = [], []

    class CountingModel(ShiftModel):
        def forward(self, *args, **kwargs) -> PipsOutput:
            source = sources[-1]
            held.append(len(source._held))
            return super().forward(*args, **kwargs)

    real_init = VideoFileFrames.__init__

    def recording_init(self, *args, **kwargs) -> None:
        real_init(self, *args, **kwargs)
        sources.append(self)

    VideoFileFrames.__init__ = recording_init
    try:
        tracker = PipsTracker(CountingModel(), S=6, iters=1, image_size=(32, 32))
        tracks = tracker(path, grid_size=2)
        assert tracks.shape == (30, 4, 2)
        assert sources[-1].frames_read == 30  # every frame decoded once
        assert len(held) == 6 and max(held) <= 12  # windows 0,5,...,24: two windows of frames held at most
        held.clear()
        tracker(path, queries=[[29, 3.0, 4.0], [12, 5.0, 6.0]])  # backward windows read the cache
        assert sources[-1].frames_read == 30 and max(held) <= 12
    finally:
        VideoFileFrames.__init__ = real_init


def test_file_frames_serve_overlapping_and_backward_windows(tmp_path) -> None:
    path = tmp_path / "clip.mp4"
    write_video(path, textured_video(T=10, H=32, W=32))
    expected = torch.from_numpy(read_frames(path)).permute(0, 3, 1, 2).float()[None]  # 1,T,3,H,W
    with VideoFileFrames(path, max_frames=9, cache=True) as source:
        assert source.num_frames == 9
        for start, end in [(0, 4), (3, 7), (5, 6), (8, 9), (1, 3), (2, 9)]:
            torch.testing.assert_close(source.get(start, end), expected[:, start:end])
        assert source.frames_read == 9
        with pytest.raises(ValueError, match=r"frames \[7, 10\) are not among the 9"):
            source.get(7, 10)
    with VideoFileFrames(path) as source, pytest.raises(ValueError, match="cache=True"):
        source.get(5, 8)
        source.get(0, 2)


@pytest.mark.parametrize(
    "queries, message",
    [
        ([[0, 128.0, 5.0]], r"query row 0 \(t=0, x=128, y=5\) lies outside the 128x96 frame"),
        ([[0, 1.0, 1.0], [0, 2.0, -0.5]], r"query row 1 .* lies outside the 128x96 frame"),
        ([[12, 1.0, 1.0]], r"lies outside the video's 12 frames \(t must be in 0..11\)"),
        ([[2.5, 1.0, 1.0]], r"t that is not a whole number"),
        ([[0, float("nan"), 1.0]], r"is not finite"),
        ([[0, 1.0]], r"N,3 rows of t,x,y \(N >= 1\), got shape \(1, 2\)"),
        (np.zeros((0, 3)), r"got shape \(0, 3\)"),
    ],
)
def test_bad_queries(queries, message) -> None:
    with pytest.raises(ValueError, match=message):
        check_queries(queries, T=12, H=96, W=128)


def test_bad_calls() -> None:
    tracker = PipsTracker(ShiftModel(), S=8, iters=1, image_size=(48, 64))
    video = np.zeros((4, 96, 128, 3), np.uint8)
    with pytest.raises(ValueError, match="exactly one of queries"):
        tracker(video)
    with pytest.raises(ValueError, match="exactly one of queries"):
        tracker(video, queries=[[0, 1.0, 1.0]], grid_size=2)
    with pytest.raises(
        ValueError, match="uint8 RGB, got ndarray of shape \\(4, 96, 128, 3\\) and dtype float32"
    ):
        tracker(video.astype(np.float32), grid_size=2)
    with pytest.raises(ValueError, match="T,H,W,3"):
        tracker(video[0], grid_size=2)
    with pytest.raises(ValueError, match="grid_size must be a positive integer"):
        tracker(video, grid_size=0)
    with pytest.raises(ValueError, match="image_size must be two positive integers"):
        PipsTracker(ShiftModel(), image_size=(512,))


def test_from_checkpoint(tmp_path) -> None:
    torch.manual_seed(1)
    model = Pips()
    save(tmp_path, model, step=7)
    tracker = PipsTracker.from_checkpoint(tmp_path, device="cpu", S=8, iters=2, image_size=(64, 64))
    assert (tracker.S, tracker.iters, tracker.image_size, tracker.fast) == (8, 2, (64, 64), False)
    assert same_weights(tracker.model, model)
    with pytest.raises(FileNotFoundError, match="get_reference_model.sh"):
        PipsTracker.from_checkpoint(tmp_path / "missing", device="cpu")


def test_fast_switch_on_cpu() -> None:
    model = Pips().set_fast(True)
    assert PipsTracker(model).fast is False and model.fast  # None leaves the model's own choice
    PipsTracker(model, fast=False)
    assert not model.fast
    PipsTracker(model, fast=True)  # bf16 needs CUDA: the exact path stays
    assert not model.fast
