"""What a run writes (tracking/outputs.py): the npz and csv hold the tracks exactly, with or without the
visibility head, and the drawn mp4 has every frame at the video's size."""

import csv

import cv2
import numpy as np

from tracking.outputs import CSV_COLUMNS, save_csv, save_npz, write_tracks_video
from tracking.predictor import Prediction
from utils.video import read_frames, video_info


def prediction(T: int, N: int, head: bool) -> Prediction:
    rng = np.random.default_rng(T * N)
    tracks = (rng.random((T, N, 2)) * [63, 47]).astype(np.float32)
    if not head:
        return Prediction(tracks, None, None)
    return Prediction(tracks, rng.random((T, N)).astype(np.float32), rng.random((T, N)).astype(np.float32))


def test_npz_and_csv_hold_the_tracks_with_the_heads_estimates(tmp_path) -> None:
    result = prediction(5, 3, head=True)
    queries = np.array([[0, 1.0, 2.0], [2, 3.0, 4.0], [4, 5.0, 6.0]], np.float32)
    save_npz(tmp_path / "t.npz", result, queries, fps=12.5)
    saved = np.load(tmp_path / "t.npz")
    assert sorted(saved.files) == ["confidence", "fps", "num_frames", "queries", "tracks", "visibility"]
    np.testing.assert_array_equal(saved["tracks"], result.tracks)
    np.testing.assert_array_equal(saved["visibility"], result.visibility)
    assert float(saved["fps"]) == 12.5 and int(saved["num_frames"]) == 5
    save_csv(tmp_path / "t.csv", result)
    with open(tmp_path / "t.csv") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == 1 + 5 * 3
    frame, point, x, y, visible, confidence = rows[1 + 2 * 3 + 1]  # frame 2, point 1
    assert (int(frame), int(point)) == (2, 1)
    assert np.float32(x) == result.tracks[2, 1, 0] and np.float32(y) == result.tracks[2, 1, 1]
    assert int(visible) == int(result.visibility[2, 1] > 0.5)
    assert abs(float(confidence) - result.confidence[2, 1]) <= 5e-5
    assert not (tmp_path / "t.csv.partial").exists() and not (tmp_path / "t.npz.partial").exists()


def test_without_the_head_the_csv_leaves_visible_and_confidence_empty(tmp_path) -> None:
    result = prediction(2, 2, head=False)
    save_npz(tmp_path / "t.npz", result, np.zeros((2, 3), np.float32), fps=24)
    assert "visibility" not in np.load(tmp_path / "t.npz").files
    save_csv(tmp_path / "t.csv", result)
    with open(tmp_path / "t.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["visible"], r["confidence"]) for r in rows] == [("", "")] * 4


def test_the_drawn_video_has_every_frame_padded_to_an_even_size(tmp_path) -> None:
    folder = tmp_path / "odd"
    folder.mkdir()
    for t in range(6):  # 47x63 frames: H.264 takes only even sides
        cv2.imwrite(str(folder / f"{t:03d}.png"), np.full((47, 63, 3), 40, np.uint8))
    result = prediction(6, 2, head=True)
    seen = []
    written = write_tracks_video(
        tmp_path / "drawn.mp4", folder, result, np.zeros((2, 3)), (47, 63), 6, 4, 4, seen.append
    )
    assert written == 6 and [chunk.shape for chunk in seen] == [(4, 47, 63, 3), (2, 47, 63, 3)]
    info = video_info(tmp_path / "drawn.mp4")
    assert (info.num_frames, info.height, info.width) == (6, 48, 64)
    assert (read_frames(tmp_path / "drawn.mp4") != 40).any()  # the dots are drawn
