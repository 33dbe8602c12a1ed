import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import tracking.predictor
from nets.pips2 import Pips, PipsOutput
from nets.precision import EXACT, Precision
from tracking.frames import VideoFileFrames
from tracking.predictor import Float16Guard, PipsTracker, build_model, check_queries, grid_queries
from tracking.settings import CPU_SETTING
from utils.checkpoint import save
from utils.dist import pick_device
from utils.video import read_frames, write_video


@pytest.fixture(scope="module")
def plain_checkpoint(tmp_path_factory) -> tuple[Pips, Path]:
    """A Pips (seed 1) saved once at step 7, alone in its directory, for the tests that load checkpoints."""
    torch.manual_seed(1)
    model = Pips()
    return model, save(tmp_path_factory.mktemp("plain"), model, step=7)


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

    def forward(self, trajs_e0, rgbs, iters=3, feat_init=None) -> PipsOutput:
        self.frame_sizes.add(tuple(rgbs.shape[-2:]))
        self.calls += 1
        coords = trajs_e0.clone()
        coords[:, 1:] += self.shift
        B, S, N, _ = trajs_e0.shape
        feats = tuple(torch.zeros(B, S, N, 4) for _ in range(3))
        return PipsOutput(coords, [coords], feats)


class BrightnessModel(ShiftModel):
    """Moves points by each frame's mean brightness at the model's resolution, so the tracks change if
    any frame reaching the model differs (decoding, resizing, time order)."""

    def forward(self, trajs_e0, rgbs, iters=3, feat_init=None) -> PipsOutput:
        out = super().forward(trajs_e0, rgbs, iters, feat_init)
        coords = out.tracks + rgbs.mean(dim=(2, 3, 4))[:, :, None, None] / 50  # B,S,N,2
        coords[:, 0] = trajs_e0[:, 0]
        return PipsOutput(coords, [coords], out.feats)


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


def test_a_frame_source_gives_the_tracks_of_its_path(tmp_path) -> None:
    path = tmp_path / "clip.mp4"
    write_video(path, textured_video(T=12), fps=10)
    tracker = PipsTracker(BrightnessModel(), S=5, iters=1, image_size=(64, 96))
    queries = np.array([[0, 10.0, 20.0], [6, 50.5, 40.0]], np.float32)  # frame 6: tracked backward too
    source = VideoFileFrames(path, image_size=(64, 96))
    first = tracker.predict(source, queries=queries).tracks
    np.testing.assert_array_equal(first, tracker(path, queries=queries))
    assert source.frames_read == 12  # decoded once, backward windows read from the cache
    np.testing.assert_array_equal(tracker(source, queries=queries), first)  # read again from frame 0
    assert source.frames_read == 24
    with pytest.raises(ValueError, match="gives 32x32 frames on cpu; this tracker takes 64x96 frames on cpu"):
        tracker(VideoFileFrames(path, image_size=(32, 32)), queries=queries)
    with pytest.raises(ValueError, match="max_frames applies to a video the tracker opens"):
        tracker(source, queries=queries, max_frames=4)


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


def test_from_checkpoint(plain_checkpoint, tmp_path, monkeypatch) -> None:
    model, path = plain_checkpoint
    tracker = PipsTracker.from_checkpoint(path.parent, device="cpu", S=8, iters=2, image_size=(64, 64))
    assert (tracker.S, tracker.iters, tracker.image_size) == (8, 2, (64, 64))
    assert tracker.model.precision == EXACT  # the fast path does not pay on the CPU
    assert same_weights(tracker.model, model) and tracker.model.stride == 8
    with pytest.raises(FileNotFoundError, match="get_reference_model.sh"):
        PipsTracker.from_checkpoint(tmp_path / "missing", device="cpu")
    # no device: CUDA, then MPS, then CPU, as pick_device says
    assert PipsTracker.from_checkpoint(path).device == pick_device()
    assert next(build_model(path).parameters()).device == pick_device()
    # no path: the reference model in ./reference_model
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    with pytest.raises(FileNotFoundError, match=r"reference_model.*get_reference_model.sh"):
        PipsTracker.from_checkpoint(device="cpu")


def test_the_tracker_runs_the_model_in_its_own_precision() -> None:
    for precision in (EXACT, Precision(True, torch.bfloat16)):
        model = Pips()
        model.precision = precision
        assert PipsTracker(model).model.precision == precision


class HeadModel(ShiftModel):
    """ShiftModel with a visibility head: visibility logits 2 (frame index even) or -1, confidence 0.5."""

    def forward(self, trajs_e0, rgbs, iters=3, feat_init=None) -> PipsOutput:
        out = super().forward(trajs_e0, rgbs, iters, feat_init)
        B, S, N, _ = trajs_e0.shape
        frame = (rgbs[:, :, 0, 0, 0] / 10).round()  # B,S
        vis = torch.where(frame % 2 == 0, 2.0, -1.0)[..., None].expand(B, S, N)
        return out._replace(vis=vis, conf=torch.full((B, S, N), 0.5))


def test_predict_gives_visibility_and_confidence_as_probabilities() -> None:
    video = (10 * np.arange(6, dtype=np.uint8))[:, None, None, None].repeat(8, 1).repeat(8, 2).repeat(3, 3)
    tracker = PipsTracker(HeadModel(dx=1.0), S=4, iters=1, image_size=(8, 8))
    out = tracker.predict(video, queries=[[0, 1.0, 2.0], [3, 4.0, 5.0]])
    vis = np.where(
        np.arange(6) % 2 == 0, 1 / (1 + np.exp(-2.0)), 1 / (1 + np.exp(1.0))
    )  # sigmoid(2), sigmoid(-1)
    np.testing.assert_allclose(out.visibility, np.repeat(vis[:, None], 2, 1), rtol=1e-6)
    np.testing.assert_allclose(out.confidence, np.full((6, 2), 1 / (1 + np.exp(-0.5))), rtol=1e-6)
    assert isinstance(out.visibility, np.ndarray) and out.tracks.shape == (6, 2, 2)
    as_tensor = tracker.predict(torch.from_numpy(video), grid_size=2)
    assert isinstance(as_tensor.visibility, torch.Tensor) and as_tensor.visibility.shape == (6, 4)
    torch.testing.assert_close(as_tensor.visibility[:, 0], torch.from_numpy(vis).float())
    plain = PipsTracker(ShiftModel(), S=4, iters=1, image_size=(8, 8)).predict(video, grid_size=2)
    assert plain.visibility is None and plain.confidence is None


class HalfModel(ShiftModel):
    """Overflows (NaN tracks) unless its precision is float32, like a float16 window that overflows."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.precision = Precision(True, dtype)
        self.dtypes: list[torch.dtype] = []

    def forward(self, trajs_e0, rgbs, iters=3, feat_init=None) -> PipsOutput:
        self.dtypes.append(self.precision.dtype)
        out = super().forward(trajs_e0, rgbs, iters, feat_init)
        overflow = self.precision.dtype != torch.float32
        return out._replace(tracks=out.tracks * float("nan")) if overflow else out


def test_float16_guard_redoes_an_overflowing_window_in_float32() -> None:
    e0, rgbs = torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 3, 8, 8)
    model = HalfModel(torch.float16)
    with pytest.warns(UserWarning, match="float16 overflowed in a window; that window is redone in float32"):
        out = Float16Guard(model)(e0, rgbs, iters=1)
    assert model.dtypes == [torch.float16, torch.float32] and torch.isfinite(out.tracks).all()
    assert model.precision == Precision(True, torch.float16)  # the next window tries float16 again
    model = HalfModel(torch.bfloat16)  # only float16 windows are redone
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.isnan(Float16Guard(model)(e0, rgbs, iters=1).tracks).all()
    assert model.dtypes == [torch.bfloat16]
    model = ShiftModel()  # finite tracks: one call, whatever the model
    Float16Guard(model)(e0, rgbs, iters=1)
    assert model.calls == 1


def test_build_model_for_each_job(plain_checkpoint, monkeypatch) -> None:
    _, path = plain_checkpoint
    lines = []
    model = build_model(None, "cpu", log=lines.append)
    assert lines == ["model: random weights on cpu"] and not model.training and model.precision == EXACT
    model = build_model(path.parent, torch.device("cpu"), job="train", log=lines.append)
    assert lines[-1] == f"model: {path} (step 7) on cpu" and model.training
    with pytest.raises(ValueError, match="job must be one of \\('infer', 'train'\\), got 'eval'"):
        build_model(None, "cpu", job="eval")
    asked = []

    def fake_choose_precision(device, fast=True, training=False):  # as on a GPU
        asked.append((device.type, fast, training))
        return Precision(True, torch.bfloat16 if training else torch.float16) if fast else EXACT

    monkeypatch.setattr(tracking.predictor, "choose_precision", fake_choose_precision)
    model = build_model(path, "cpu", log=lines.append)
    assert lines[-1] == f"model: {path} (step 7) on cpu, fast path (float16)"
    assert model.precision == Precision(True, torch.float16)
    assert model.fnet.conv2.weight.is_contiguous(memory_format=torch.channels_last)
    model = build_model(path, "cpu", job="train", log=lines.append)
    assert lines[-1] == f"model: {path} (step 7) on cpu, fast path (bfloat16)" and model.training
    model = build_model(path, "cpu", fast=False, log=lines.append)
    assert lines[-1] == f"model: {path} (step 7) on cpu" and model.precision == EXACT
    assert asked == [("cpu", True, False), ("cpu", True, True), ("cpu", False, False)]


def test_tracker_settings_are_checked() -> None:
    for S, iters in [(1, 4), (8, 0)]:
        with pytest.raises(ValueError, match=f"need S >= 2 and iters >= 1, got S={S}, iters={iters}"):
            PipsTracker(ShiftModel(), S=S, iters=iters)
    tracker = PipsTracker(ShiftModel(), S=2, iters=1, image_size=[16, 24])
    assert (tracker.S, tracker.iters, tracker.image_size, tracker.device) == (
        2,
        1,
        (16, 24),
        torch.device("cpu"),
    )
    assert not tracker.model.training
    for bad in [(0, 8), (8,), (8.0, 8), (True, 8)]:
        with pytest.raises(ValueError, match="image_size must be two positive integers"):
            PipsTracker(ShiftModel(), image_size=bad)


def test_grid_queries_checks() -> None:
    for bad in [True, 2.0, -1, 0]:
        with pytest.raises(ValueError, match="grid_size must be a positive integer"):
            grid_queries(bad, 96, 128)
    torch.testing.assert_close(
        grid_queries(2, 512, 896), torch.tensor([[0.0, 8, 8], [0, 888, 8], [0, 8, 504], [0, 888, 504]])
    )


class CallLog(ShiftModel):
    """ShiftModel that records the iterations, templates and autocast dtype of each call, and overflows
    when that dtype is float16."""

    def __init__(self, precision: Precision = EXACT) -> None:
        super().__init__()
        self.precision = precision
        self.seen: list[tuple] = []

    def forward(self, trajs_e0, rgbs, iters=3, feat_init=None) -> PipsOutput:
        self.seen.append((iters, feat_init, self.precision.dtype))
        out = super().forward(trajs_e0, rgbs, iters, feat_init)
        overflow = self.precision.dtype == torch.float16
        return out._replace(tracks=out.tracks * float("nan")) if overflow else out


def test_float16_guard_passes_the_window_on() -> None:
    e0, rgbs = torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 3, 8, 8)
    feats = tuple(torch.full((1, 3, 2, 1), float(i)) for i in range(3))
    model = CallLog(Precision(True, torch.float16))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Float16Guard(model)(e0, rgbs, iters=5, feat_init=feats)
    assert model.seen == [(5, feats, torch.float16), (5, feats, torch.float32)]
    assert [str(w.message) for w in caught] == [
        "float16 overflowed in a window; that window is redone in float32"
    ]
    assert not caught[0].filename.endswith("predictor.py")  # it points at the caller, not at the guard
    model = CallLog()
    Float16Guard(model)(e0, rgbs, iters=2, feat_init=feats)
    assert model.seen == [(2, feats, torch.float32)]


def test_queries_on_the_frame_border_are_inside() -> None:
    H, W = 96, 128
    corners = [[0, 0.0, 0.0], [1, W - 1.0, 0.0], [2, 0.0, H - 1.0], [11, W - 1.0, H - 1.0]]
    q = check_queries(corners, T=12, H=H, W=W)
    assert q.dtype == torch.float32 and q.tolist() == corners
    whole = check_queries([[3, 10, 20]], T=12, H=H, W=W)  # integers are fine
    assert whole.dtype == torch.float32 and whole.tolist() == [[3.0, 10.0, 20.0]]
    for row in ([0, -0.5, 5.0], [0, W - 0.5, 5.0], [0, 5.0, -0.5], [0, 5.0, H - 0.5]):
        with pytest.raises(ValueError, match="lies outside the 128x96 frame$"):
            check_queries([row], T=12, H=H, W=W)
    for row, why in [
        ([0, float("nan"), 1.0], "(t=0, x=nan, y=1) is not finite"),
        ([2.5, 1.0, 1.0], "(t=2.5, x=1, y=1) has a frame index t that is not a whole number"),
    ]:
        with pytest.raises(ValueError, match=f"^query row 0 {re.escape(why)}$"):
            check_queries([row], T=12, H=H, W=W)


def test_the_grid_is_built_without_warnings() -> None:
    warn_always = torch.is_warn_always_enabled()
    torch.set_warn_always(True)  # torch gives some warnings once per process: here, every time
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            grid = grid_queries(2, 20, 30, image_size=(20, 30))
    finally:
        torch.set_warn_always(warn_always)
    torch.testing.assert_close(grid, torch.tensor([[0.0, 8, 8], [0, 22, 8], [0, 8, 12], [0, 22, 12]]))


def test_calls_pass_the_frame_limit_progress_and_iterations_on(monkeypatch) -> None:
    sources = []

    real_open_frames = tracking.predictor.open_frames

    def recording_open_frames(*args, **kwargs):  # noqa: ANN202
        sources.append(real_open_frames(*args, **kwargs))
        return sources[-1]

    monkeypatch.setattr(tracking.predictor, "open_frames", recording_open_frames)
    video = np.zeros((9, 16, 16, 3), np.uint8)
    model = CallLog()
    tracker = PipsTracker(model, S=3, iters=4, image_size=(16, 16))
    steps: list[int] = []
    tracks = tracker(video, queries=[[0, 5.0, 6.0]], max_frames=5, progress=steps.append)
    assert tracks.shape == (5, 1, 2) and steps == [2, 2] and [s[0] for s in model.seen] == [4, 4]
    assert not sources[-1].cache  # every query at frame 0: nothing is read backward
    with pytest.raises(
        ValueError, match=r"^give exactly one of queries \(N,3 rows of t,x,y\) and grid_size$"
    ):
        tracker(video)
    tracker(video, queries=[[1, 5.0, 6.0], [0, 7.0, 0.0]])
    assert sources[-1].cache  # the query at frame 1 is tracked back to frame 0


def test_trackers_run_where_they_are_put(plain_checkpoint, monkeypatch) -> None:
    tracker = PipsTracker(torch.nn.Linear(1, 1, device="meta"))
    assert tracker.device == torch.device("meta")  # the model's device
    default = PipsTracker(CallLog())  # on the CPU: the CPU setting (tests/test_settings.py)
    assert (default.S, default.iters, default.image_size) == (
        CPU_SETTING.S,
        CPU_SETTING.iters,
        CPU_SETTING.image_size,
    )
    asked = []

    def fake_choose_precision(device, fast=True, training=False):  # noqa: ANN202
        asked.append((device.type, fast, training))
        return EXACT

    monkeypatch.setattr(tracking.predictor, "choose_precision", fake_choose_precision)
    _, path = plain_checkpoint
    tracker = PipsTracker.from_checkpoint(path, device="meta")
    assert (tracker.S, tracker.iters, tracker.device) == (64, 16, torch.device("meta"))
    assert next(tracker.model.parameters()).device == torch.device("meta")
    assert asked == [("meta", True, False)]  # decided once, by build_model
    asked.clear()
    PipsTracker.from_checkpoint(path.parent, device="meta", fast=False)
    assert asked == [("meta", False, False)]
    model = build_model(None, "meta")
    assert next(model.parameters()).device == torch.device("meta") and model.stride == 8


def test_build_model_follows_the_checkpoints_head(tmp_path, caplog) -> None:
    torch.manual_seed(2)
    with_head = Pips(vis_head=True)
    path = save(tmp_path, with_head, step=5)
    lines = []
    model = build_model(path, "cpu", log=lines.append)
    assert model.vis_head is not None and same_weights(model, with_head)
    assert lines == [f"model: {path} (step 5), visibility head on cpu"]
    backbone = {k: v for k, v in with_head.state_dict().items() if not k.startswith("vis_head.")}
    torch.save({"model_state_dict": backbone}, tmp_path / "backbone.pth")
    assert build_model(tmp_path / "backbone.pth", "cpu").vis_head is None
    torch.manual_seed(4)
    untrained = Pips(vis_head=True).vis_head
    torch.manual_seed(4)
    with caplog.at_level("WARNING", logger="utils.checkpoint"):
        model = build_model(tmp_path / "backbone.pth", "cpu", vis_head=True)
    assert same_weights(model.vis_head, untrained)  # the head starts from Pips' own initialisation
    assert all(torch.equal(model.state_dict()[k], v) for k, v in backbone.items())
    assert [r.getMessage() for r in caplog.records] == [
        f"checkpoint {tmp_path / 'backbone.pth'} has no vis_head.* parameters: they start from their "
        "initialisation, untrained"
    ]


class FakeWindow(torch.nn.Module):
    """Stands in for OnnxWindow: an export's spec, and the settings it was asked to check."""

    def __init__(self, path, providers=None) -> None:
        super().__init__()
        from tracking.onnx_export import WindowSpec

        self.path, self.providers, self.checked = path, providers, []
        self.spec = WindowSpec(S=12, height=96, width=160, iters=3, latent_dim=128, vis_head=False)

    def check(self, image_size, iters) -> None:
        self.checked.append((tuple(image_size), iters))


def test_from_onnx_takes_the_exports_settings_unless_given(monkeypatch) -> None:
    monkeypatch.setattr(tracking.predictor, "OnnxWindow", FakeWindow)
    tracker = PipsTracker.from_onnx("a.onnx", providers=["CPUExecutionProvider"])
    assert (tracker.S, tracker.iters, tracker.image_size) == (12, 3, (96, 160))
    assert tracker.device == torch.device("cpu") and tracker.model.path == "a.onnx"
    assert tracker.model.providers == ["CPUExecutionProvider"] and tracker.model.checked == [((96, 160), 3)]
    given = PipsTracker.from_onnx("b.onnx", S=20, iters=5, image_size=[64, 128])
    assert (given.S, given.iters, given.image_size) == (20, 5, (64, 128))
    assert given.model.checked == [((64, 128), 5)] and given.model.providers is None
