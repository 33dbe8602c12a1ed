"""The tracking API's tracks for one fixed video and fixed queries (fixtures/api_tracks.npz, written by
PipsTracker). Any change to frame reading, resizing, query scaling, window chaining or backward tracking
shows up here.

The model is the seeded random one with its delta block's output scaled by DAMPING: its tracks still move
several pixels, but rounding differences between CPUs (vector kernels, thread counts) stay near 1e-4 px
instead of growing from window to window as they do with full-size random updates."""

from pathlib import Path

import numpy as np
import torch

from nets.pips2 import Pips
from tracking import PipsTracker
from utils.video import read_frames, write_video

FIXTURE = Path(__file__).parent / "fixtures" / "api_tracks.npz"
# frame-0, mid-video and last-frame queries (t, x, y) in the video's 100x72 pixels
QUERIES = np.array(
    [[0, 10.0, 12.0], [0, 60.5, 40.0], [0, 95.0, 70.0], [11, 30.0, 30.0], [11, 70.0, 20.5], [23, 50.0, 36.0]],
    np.float32,
)


def golden_video(T: int = 24, H: int = 72, W: int = 100) -> np.ndarray:
    """Textured background with two bright squares moving in opposite directions, T,H,W,3 uint8."""
    rng = np.random.default_rng(7)
    background = rng.integers(0, 160, (H, W, 3), dtype=np.uint8)
    frames = []
    for t in range(T):
        frame = np.roll(background, t, axis=1).copy()
        frame[10 + t : 26 + t, 20 + 2 * t : 36 + 2 * t] = (250, 220, 40)
        frame[40:56, 70 - t : 86 - t] = (30, 230, 240)
        frames.append(frame)
    return np.stack(frames)  # T,H,W,3


DAMPING = 0.1


def make_tracker() -> PipsTracker:
    torch.manual_seed(0)
    model = Pips()
    with torch.no_grad():
        model.delta_block.dense.weight.mul_(DAMPING)
        model.delta_block.dense.bias.mul_(DAMPING)
    return PipsTracker(model, S=8, iters=2, image_size=(64, 96))


def test_api_tracks_equal_the_recorded_ones(tmp_path) -> None:
    expected = np.load(FIXTURE)
    video = golden_video()
    tracker = make_tracker()
    tracks = tracker(video, queries=QUERIES)
    np.testing.assert_allclose(tracks, expected["queries_tracks"], atol=1e-3, rtol=0)
    np.testing.assert_allclose(tracker(video, grid_size=3), expected["grid_tracks"], atol=1e-3, rtol=0)
    # a video file takes the same path once decoded: its tracks equal those of its decoded frames
    path = tmp_path / "golden.mp4"
    write_video(path, video, fps=10)
    np.testing.assert_array_equal(tracker(path, queries=QUERIES), tracker(read_frames(path), queries=QUERIES))
