import json
import pickle
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import test_on_cro
import test_on_pod
import test_on_tap
from datasets.sample import EvalSequence
from datasets.synthetic import make_scene, write_sequence
from nets.pips2 import PipsOutput
from tracking.evaluate import (
    EvalProtocol,
    EvalResults,
    check_image_size,
    evaluate_dataset,
    mean_metrics,
    results_table,
    write_results,
)
from tracking.frames import ArrayFrames, ImageFiles

REPO = Path(__file__).resolve().parents[1]
PIPS_KEYS = ("d_1", "d_2", "d_4", "d_8", "d_16", "d_avg", "survival", "median_l2")
TINY = dict(S=8, iters=1, image_size=(64, 96), device="cpu", random_weights=True)


class StillModel(torch.nn.Module):
    """Stands in for Pips: predicts that every point stays where it is at the window's first frame."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, trajs_e0, rgbs, iters=3, feat_init=None, beautify=False) -> PipsOutput:
        coords = trajs_e0[:, :1].expand_as(trajs_e0).clone()
        feats = tuple(torch.zeros(*trajs_e0.shape[:3], 2) for _ in range(3))
        return PipsOutput(coords, [coords], feats, [coords])


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def check_pips_metrics(metrics: dict) -> None:
    for k in PIPS_KEYS[:-1]:
        assert 0.0 <= metrics[k] <= 100.0, (k, metrics[k])
    assert metrics["median_l2"] >= 0.0
    thresholds = [metrics[k] for k in PIPS_KEYS[:5]]
    assert thresholds == sorted(thresholds)
    assert metrics["d_avg"] == pytest.approx(sum(thresholds) / 5)


def test_loop_scores_a_still_prediction_against_a_moving_point(capsys: pytest.CaptureFixture) -> None:
    # 256 px wide: the normalised error equals the x error in pixels. The point moves +1 px/frame in x.
    T = 5
    trajs_g = np.zeros((T, 1, 2), np.float32)
    trajs_g[:, 0, 0] = 10 + np.arange(T)
    trajs_g[:, 0, 1] = 20
    ones = np.ones((T, 1), np.float32)
    seq = EvalSequence("walk", np.zeros((T, 64, 256, 3), np.uint8), (64, 256), trajs_g, ones, ones)
    protocol = EvalProtocol(
        (64, 256), S=3, iters=1, extra=lambda model, frames, seq: {"other": None, "more": 3.0}
    )
    results = evaluate_dataset(StillModel(), [seq], protocol)
    (row,) = results.videos
    # errors 1, 2, 3, 4 at frames 1..4: d_1 0%, d_2 25%, d_4 75%, d_8 = d_16 = 100%; median of 0..4 = 2
    expected = {"d_1": 0, "d_2": 25, "d_4": 75, "d_8": 100, "d_16": 100, "d_avg": 60, "survival": 100}
    for k, v in expected.items():
        assert row[k] == pytest.approx(v), k
    assert row["median_l2"] == pytest.approx(2.0)
    assert (row["name"], row["num_frames"], row["num_points"]) == ("walk", 5, 1)
    assert results.mean["d_avg"] == pytest.approx(60) and results.mean["other"] is None
    assert results.mean["more"] == 3.0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("walk; step 000001/1; rtime ")
    assert line.endswith("d_x 60.0; sur_x 100.0; med_x 2.0")


def test_mean_table_and_json_keep_missing_values_as_null(tmp_path: Path) -> None:
    videos = [{"name": "a", "d_avg": 10.0, "aj": None}, {"name": "b", "d_avg": float("nan"), "aj": None}]
    videos.append({"name": "c", "d_avg": 30.0, "aj": None})
    mean = mean_metrics(videos)
    assert mean == {"d_avg": 20.0, "aj": None}
    results = EvalResults(videos, mean, skipped=["scene_0007: cannot read anno.npz"])
    table = results_table(results)
    assert "| d_avg            | 20.00 |" in table and "| aj               |   n/a |" in table
    assert "| videos evaluated |     3 |" in table and "| videos skipped   |     1 |" in table
    path = write_results(tmp_path / "out" / "results.json", {"S": 8}, results)
    data = read_json(path)
    assert data["config"] == {"S": 8} and data["mean"] == {"d_avg": 20.0, "aj": None}
    assert data["videos"][1]["d_avg"] is None
    assert data["num_videos"] == 3 and data["skipped"] == ["scene_0007: cannot read anno.npz"]


def test_image_size_checks() -> None:
    assert check_image_size("64,96") == (64, 96) and check_image_size((512, 896)) == (512, 896)
    with pytest.raises(ValueError, match="multiples of 32"):
        check_image_size((64, 100))
    with pytest.raises(ValueError, match="two integers"):
        check_image_size("64")


def test_image_files_read_rgb_resized(tmp_path: Path) -> None:
    rgb = np.zeros((10, 20, 3), np.uint8)
    rgb[..., 0] = 200  # red
    paths = []
    for t in range(3):
        paths.append(tmp_path / f"{t}.png")
        cv2.imwrite(str(paths[-1]), rgb[..., ::-1])
    frames = ImageFiles(paths, image_size=(5, 10), resize="cv2").get(1, 3)
    assert frames.shape == (1, 2, 3, 5, 10) and frames.dtype == torch.float32
    assert frames[0, :, 0].eq(200).all() and frames[0, :, 1:].eq(0).all()
    with pytest.raises(FileNotFoundError, match="missing.png"):
        ImageFiles([tmp_path / "missing.png"], image_size=(5, 10)).get(0, 1)


def test_on_pod_end_to_end(tmp_path: Path) -> None:
    for i in range(2):
        scene = make_scene(8, 96, 128, np.random.default_rng(i), num_points=256)
        write_sequence(scene, tmp_path / "pod" / "test" / f"scene_{i:04d}")
    test_on_pod.main(dataset_location=str(tmp_path / "pod"), N=8, log_dir=str(tmp_path / "logs"), **TINY)
    data = read_json(tmp_path / "logs" / "results.json")
    assert [v["name"] for v in data["videos"]] == ["scene_0000", "scene_0001"]
    assert all(v["num_frames"] == 8 and v["num_points"] == 8 for v in data["videos"])
    for metrics in [data["mean"], *data["videos"]]:
        check_pips_metrics(metrics)
    assert data["mean"]["d_avg"] == pytest.approx(np.mean([v["d_avg"] for v in data["videos"]]))
    assert data["config"]["image_size"] == [64, 96] and data["config"]["N"] == 8


def test_missing_checkpoint_is_one_clear_line(tmp_path: Path) -> None:
    scene = make_scene(8, 96, 128, np.random.default_rng(0), num_points=64)
    write_sequence(scene, tmp_path / "test" / "scene_0000")
    missing = tmp_path / "no_model_here"
    proc = subprocess.run(
        [sys.executable, "test_on_pod.py", "--init_dir", str(missing), "--dataset_location", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "get_reference_model.sh" in proc.stderr and str(missing) in proc.stderr


def moving_square_video(T: int, H: int, W: int) -> tuple[np.ndarray, np.ndarray]:
    """A textured 24x24 square moving +4 px/frame in x over a textured background -> video T,H,W,3
    uint8 and the exact positions T,4,2 of its centre and three inner points."""
    rng = np.random.default_rng(0)
    background = rng.integers(0, 255, (H, W + 4 * T, 3), dtype=np.uint8)
    square = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
    video = np.empty((T, H, W, 3), np.uint8)
    offsets = np.array([[12, 12], [4, 4], [20, 4], [12, 20]], np.float32)  # inside the square
    trajs = np.empty((T, 4, 2), np.float32)
    for t in range(T):
        video[t] = background[:, t : t + W]
        x0, y0 = 10 + 4 * t, 20
        video[t, y0 : y0 + 24, x0 : x0 + 24] = square
        trajs[t] = offsets + [x0, y0]
    return video, trajs


def test_on_tap_end_to_end_both_protocols(tmp_path: Path) -> None:
    T, H, W = 6, 80, 120
    video, trajs = moving_square_video(T, H, W)
    occluded = np.zeros((4, T), bool)
    occluded[3, :5] = True  # point 3 appears at frame 5: not in the frame-0 protocol, tracked backward from 5
    points = (trajs / [W - 1, H - 1]).transpose(1, 0, 2)  # N,T,2 normalised
    (tmp_path / "tap").mkdir()
    with open(tmp_path / "tap" / "tapvid_davis.pkl", "wb") as f:
        pickle.dump({"square": {"video": video, "points": points, "occluded": occluded}}, f)
    test_on_tap.main(
        dataset_location=str(tmp_path / "tap"), log_dir=str(tmp_path / "logs"), log_gifs=True, **TINY
    )
    events = b"".join(p.read_bytes() for p in (tmp_path / "logs").glob("events.out.tfevents*"))
    for tag in (b"metrics/d_avg", b"0_inputs/trajs_g_on_rgb0", b"2_outputs/trajs_e_on_rgbs"):
        assert tag in events
    data = read_json(tmp_path / "logs" / "results.json")
    (row,) = data["videos"]
    assert row["name"] == "square" and row["num_points"] == 3 and row["num_frames"] == T
    check_pips_metrics(row)
    for mode in ("first", "strided"):
        within = [row[f"tapvid_{mode}/pts_within_{thr}"] for thr in (1, 2, 4, 8, 16)]
        assert within == sorted(within) and all(0 <= v <= 100 for v in within)
        assert row[f"tapvid_{mode}/delta_avg"] == pytest.approx(np.mean(within))
        assert row[f"tapvid_{mode}/average_jaccard"] is None
        assert data["mean"][f"tapvid_{mode}/occlusion_accuracy"] is None


def test_tapvid_metrics_of_a_still_prediction() -> None:
    # point 0 static, point 1 moves +3 px/frame; model and TAP-Vid spaces are 256x256, so no scaling
    T = 4
    trajs = np.zeros((T, 2, 2), np.float32)
    trajs[:, :, 1] = 100
    trajs[:, 0, 0] = 50
    trajs[:, 1, 0] = 10 + 3 * np.arange(T)
    ones = np.ones((T, 2), np.float32)
    clip = EvalSequence("still", np.zeros((T, 256, 256, 3), np.uint8), (256, 256), trajs, ones, ones)
    frames = ArrayFrames(clip.frames)
    out = test_on_tap.tapvid_metrics(StillModel(), frames, (256, 256), clip, "first", S=8, iters=1)
    # frames 1..3 evaluated: point 0 errors 0,0,0; point 1 errors 3,6,9
    expected = {1: 50.0, 2: 50.0, 4: 400 / 6, 8: 500 / 6, 16: 100.0}
    for thr, v in expected.items():
        assert out[f"tapvid_first/pts_within_{thr}"] == pytest.approx(v)
    assert out["tapvid_first/delta_avg"] == pytest.approx(70.0)
    assert out["tapvid_first/average_jaccard"] is None and out["tapvid_first/occlusion_accuracy"] is None


def test_on_tap_rejects_unknown_query_mode(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="query_modes"):
        test_on_tap.main(dataset_location=str(tmp_path), query_modes="last", **TINY)


def test_on_cro_end_to_end(tmp_path: Path) -> None:
    T, H, W = 8, 96, 160
    seq = tmp_path / "cro" / "HT21" / "train" / "HT21-01"
    (seq / "gt").mkdir(parents=True)
    (seq / "img1").mkdir()
    rng = np.random.default_rng(0)
    for t in range(T):
        cv2.imwrite(str(seq / "img1" / f"{t + 1:06d}.jpg"), rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
    rows = []
    for head, y in ((1, 40), (2, 50), (3, 60)):
        for t in range(T):
            x = 40 + 40 * (t % 2)  # back and forth: path > 150 px, inside the 32 px border
            rows.append(f"{t + 1},{head},{x - 4},{y - 4},8,8,1,1,1")
    (seq / "gt" / "gt.txt").write_text("\n".join(rows) + "\n")
    test_on_cro.main(
        dataset_location=str(tmp_path / "cro"),
        clip_len=12,
        min_clip_len=8,
        log_dir=str(tmp_path / "logs"),
        **TINY,
    )
    data = read_json(tmp_path / "logs" / "results.json")
    (row,) = data["videos"]
    assert row["name"] == "HT21-01_000000_000008" and row["num_points"] == 3 and row["num_frames"] == T
    check_pips_metrics(row)
