"""The evaluation scripts end to end, with a stand-in model whose tracks are known, so that every number in
results.json can be worked out by hand: the reader, the resolution change (ground truth scaled x*W'/W,
y*H'/H) and the frame resize rule of each protocol (cv2 for PointOdyssey and CroHD, bilinear for TAP-Vid)."""

import json
import os
import pickle
import re
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import test_on_cro
import test_on_pod
import test_on_tap
import tracking.evaluate
from datasets.sample import EvalSequence
from datasets.synthetic import make_scene, write_sequence
from nets.pips2 import PipsOutput
from tracking.frames import ArrayFrames
from utils.config import UsageError

REPO = Path(__file__).resolve().parents[1]
EVAL_HW = (64, 96)
TINY = dict(S=8, iters=1, image_size=EVAL_HW, device="cpu", random_weights=True)


class StillModel(torch.nn.Module):
    """Stands in for Pips: every point stays at its window's first position, with visibility logits +5 when
    `vis_head`. Records the frames of every window."""

    def __init__(self, vis_head: bool = True) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.vis_head = vis_head
        self.windows: list[torch.Tensor] = []

    def forward(self, trajs_e0, rgbs, iters=3, feat_init=None) -> PipsOutput:
        self.windows.append(rgbs.clone())
        coords = trajs_e0[:, :1].expand_as(trajs_e0).clone()
        feats = tuple(torch.zeros(*trajs_e0.shape[:3], 2) for _ in range(3))
        vis = torch.full(trajs_e0.shape[:3], 5.0) if self.vis_head else None
        return PipsOutput(coords, [coords], feats, vis=vis)


@pytest.fixture
def still(monkeypatch) -> StillModel:
    """The model every script builds."""
    model = StillModel()
    monkeypatch.setattr(tracking.evaluate, "build_model", lambda *args, **kwargs: model)
    return model


def read_results(log_dir: Path) -> dict:
    return json.loads((log_dir / "results.json").read_text())


def check_metrics(row: dict, expected: dict) -> None:
    for k, v in expected.items():
        if v is None:
            assert row[k] is None, k
        else:
            assert row[k] == pytest.approx(v), k


def cv2_resized(path: Path) -> torch.Tensor:
    """An image file as the official scripts give it to the model: cv2 decode, RGB, cv2.resize -> 3,H,W."""
    rgb = cv2.imread(str(path))[..., ::-1]
    resized = cv2.resize(rgb, EVAL_HW[::-1], interpolation=cv2.INTER_LINEAR)
    return torch.from_numpy(resized.astype(np.float32)).permute(2, 0, 1)


def check_cv2_windows(model: StillModel, paths: list[Path]) -> None:
    """The model saw one window holding the cv2-resized frames (the bilinear rule on float frames differs)."""
    frames = torch.stack([cv2_resized(p) for p in paths])  # T,3,H,W
    decoded = np.stack([cv2.imread(str(p))[..., ::-1] for p in paths])  # T,H,W,3
    as_float = F.interpolate(torch.from_numpy(decoded).permute(0, 3, 1, 2).float(), EVAL_HW, mode="bilinear")
    assert (as_float - frames).abs().max() > 0.25  # the two rules are told apart by these frames
    (window,) = model.windows
    torch.testing.assert_close(window[0], frames, atol=0, rtol=0)


def test_on_pod_at_another_resolution(tmp_path: Path, still: StillModel) -> None:
    # frames 48x128 evaluated at 64x96: x scales by 3/4, y by 4/3, and a pixel of the normalised 256x256 space
    # is 96/256 px in x and 64/256 px in y. Point 0 moves 1.5 px/frame in x (3 normalised px), point 1
    # 15/16 px/frame in y (5 normalised px); the still model is off by 3 t and 5 t at frame t
    T = 8
    seq = tmp_path / "pod" / "test" / "hand"
    (seq / "rgbs").mkdir(parents=True)
    rng = np.random.default_rng(0)
    paths = [seq / "rgbs" / f"rgb_{t:05d}.jpg" for t in range(T)]
    for path in paths:
        cv2.imwrite(str(path), rng.integers(0, 256, (48, 128, 3), dtype=np.uint8))
    t = np.arange(T, dtype=np.float32)
    trajs = np.stack(
        [np.stack([40 + 1.5 * t, np.full(T, 12.0)], -1), np.stack([np.full(T, 80.0), 24 + t * 15 / 16], -1)],
        1,
    )
    ones = np.ones((T, 2), np.float32)
    np.savez(seq / "anno.npz", trajs_2d=trajs.astype(np.float32), visibs=ones, valids=ones)
    test_on_pod.main(
        test_on_pod.PodConfig(
            dataset_location=str(tmp_path / "pod"), N=8, log_dir=str(tmp_path / "logs"), **TINY
        )
    )
    data = read_results(tmp_path / "logs")
    (row,) = data["videos"]
    assert (row["name"], row["num_frames"], row["num_points"]) == ("hand", T, 2)
    # errors at frames 1..7: 3, 6, ..., 21 and 5, 10, ..., 35 (14 entries)
    expected = {"d_1": 0.0, "d_2": 0.0, "d_4": 100 / 14, "d_8": 300 / 14, "d_16": 800 / 14, "d_avg": 120 / 7}
    # point 0 dies at frame 6 (18 > 16), point 1 at frame 4 (20): alive 6 + 4 of 16; medians 10.5 and 17.5
    expected |= {"survival": 62.5, "median_l2": 14.0, "d_avg_visible": 120 / 7, "d_avg_occluded": None}
    check_metrics(row, expected | {"occlusion_accuracy": 100.0})
    check_metrics(data["mean"], expected)
    assert data["config"]["image_size"] == [64, 96] and data["config"]["N"] == 8
    check_cv2_windows(still, paths)


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


def ramp_video(T: int) -> np.ndarray:
    """T,48,128,3 uint8 frames whose red channel is 2x and green channel 3y."""
    yy, xx = np.mgrid[:48, :128]
    frame = np.stack([2 * xx, 3 * yy, np.zeros_like(xx)], -1).astype(np.uint8)
    return np.repeat(frame[None], T, axis=0)


def test_on_tap_both_protocols_by_hand(tmp_path: Path, still: StillModel) -> None:
    # point 0 visible throughout, moving 1.5 px/frame in x; point 1 occluded at frames 0 and 1, moving
    # 15/16 px/frame in y. From 48x128 at 64x96, as at 256x256 (the TAP-Vid space), those are 3 and 5 px/frame
    T, H, W = 6, 48, 128
    t = np.arange(T, dtype=np.float32)
    trajs = np.stack(
        [np.stack([40 + 1.5 * t, np.full(T, 12.0)], -1), np.stack([np.full(T, 80.0), 24 + t * 15 / 16], -1)]
    )
    occluded = np.zeros((2, T), bool)
    occluded[1, :2] = True
    points = trajs / [W - 1, H - 1]  # N,T,2 normalised: 1.0 is the last pixel centre
    (tmp_path / "tap").mkdir()
    with open(tmp_path / "tap" / "tapvid_davis.pkl", "wb") as f:
        pickle.dump({"ramp": {"video": ramp_video(T), "points": points, "occluded": occluded}}, f)
    test_on_tap.main(
        test_on_tap.TapConfig(
            dataset_location=str(tmp_path / "tap"), log_dir=str(tmp_path / "logs"), log_gifs=True, **TINY
        )
    )
    events = b"".join(p.read_bytes() for p in (tmp_path / "logs").glob("events.out.tfevents*"))
    for tag in (b"metrics/d_avg", b"0_inputs/trajs_g_on_rgb0", b"2_outputs/trajs_e_on_rgbs"):
        assert tag in events
    (row,) = read_results(tmp_path / "logs")["videos"]
    # the frame-0 protocol: only point 0 (point 1 is not visible at frame 0); errors 3, 6, 9, 12, 15
    assert (row["name"], row["num_points"], row["num_frames"]) == ("ramp", 1, T)
    expected = {
        "d_1": 0.0,
        "d_2": 0.0,
        "d_4": 20.0,
        "d_8": 40.0,
        "d_16": 100.0,
        "d_avg": 32.0,
        "survival": 100.0,
    }
    check_metrics(row, expected | {"median_l2": 7.5, "d_avg_occluded": None, "occlusion_accuracy": 100.0})
    # 'first': queries at frames 0 (point 0) and 2 (point 1); errors 3, 6, 9, 12, 15 and 5, 10, 15, all
    # visible and predicted visible; a miss at a threshold is a false positive: jaccard = k / (8 + 8 - k)
    first = {"pts_within_1": 0.0, "pts_within_2": 0.0, "pts_within_4": 12.5, "pts_within_8": 37.5}
    first |= {"pts_within_16": 100.0, "delta_avg": 30.0, "occlusion_accuracy": 100.0}
    first |= {"average_jaccard": 100 * (1 / 15 + 3 / 13 + 1) / 5}
    check_metrics(row, {f"tapvid_first/{k}": v for k, v in first.items()})
    # 'strided' (every 5th frame): queries (0, point 0), (5, point 0), (5, point 1), each scored at the other
    # five frames: 13 visible entries (errors 3..15, 15..3, and 15, 10, 5 at frames 2..4) and point 1's
    # occluded frames 0 and 1, predicted visible (two false positives and two occlusion errors)
    strided = {"pts_within_1": 0.0, "pts_within_2": 0.0, "pts_within_4": 200 / 13, "pts_within_8": 500 / 13}
    strided |= {"pts_within_16": 100.0, "delta_avg": 100 * 20 / 65, "occlusion_accuracy": 100 * 13 / 15}
    strided |= {"average_jaccard": 100 * (2 / 26 + 5 / 23 + 13 / 15) / 5}
    check_metrics(row, {f"tapvid_strided/{k}": v for k, v in strided.items()})
    # the bilinear rule on float frames: at model pixel (x=2, y=1) red = 2 * ((2 + 0.5) * 128/96 - 0.5) = 17/3
    # and green = 3 * ((1 + 0.5) * 48/64 - 0.5) = 1.875 (cv2 would round them to 6 and 2)
    # frame-0 protocol: one window; 'first': forward from frames 0 and 2, backward from 2; 'strided': forward
    # from 0, backward from 5 (a pass over a single frame has no window)
    assert len(still.windows) == 1 + 3 + 2
    for window in still.windows:
        assert window.shape[-2:] == EVAL_HW
        torch.testing.assert_close(window[0, :, 0, 1, 2], torch.full((window.shape[1],), 17 / 3))
        torch.testing.assert_close(window[0, :, 1, 1, 2], torch.full((window.shape[1],), 1.875))


def test_tapvid_metrics_without_a_visibility_head() -> None:
    # point 0 static, point 1 moves +3 px/frame; model and TAP-Vid spaces are 256x256, so no scaling
    T = 4
    trajs = np.zeros((T, 2, 2), np.float32)
    trajs[:, :, 1] = 100
    trajs[:, 0, 0] = 50
    trajs[:, 1, 0] = 10 + 3 * np.arange(T)
    ones = np.ones((T, 2), np.float32)
    clip = EvalSequence("still", np.zeros((T, 256, 256, 3), np.uint8), (256, 256), trajs, ones, ones)
    frames = ArrayFrames(clip.frames)
    out = test_on_tap.tapvid_metrics(
        StillModel(vis_head=False), frames, (256, 256), clip, "first", S=8, iters=1
    )
    # frames 1..3 evaluated: point 0 errors 0,0,0; point 1 errors 3,6,9
    expected = {1: 50.0, 2: 50.0, 4: 400 / 6, 8: 500 / 6, 16: 100.0}
    for thr, v in expected.items():
        assert out[f"tapvid_first/pts_within_{thr}"] == pytest.approx(v)
    assert out["tapvid_first/delta_avg"] == pytest.approx(70.0)
    # AJ and OA need a visibility estimate: n/a without one
    assert out["tapvid_first/average_jaccard"] is None and out["tapvid_first/occlusion_accuracy"] is None


def test_on_tap_rejects_unknown_query_mode(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"^--query_modes must be among first, strided, got last$"):
        test_on_tap.TapConfig(dataset_location=str(tmp_path), query_modes=("last",), **TINY)


def test_on_cro_by_hand(tmp_path: Path, still: StillModel) -> None:
    # frames 96x160 at 64x96. Heads 1 and 3 jump 40 px in x every other frame, head 2 28 px in y: against a
    # still prediction, 40 * 256/160 = 64 and 28 * 256/96 = 74.67 normalised px at odd frames, 0 at even ones
    T, H, W = 8, 96, 160
    seq = tmp_path / "cro" / "HT21" / "train" / "HT21-01"
    (seq / "gt").mkdir(parents=True)
    (seq / "img1").mkdir()
    rng = np.random.default_rng(0)
    paths = [seq / "img1" / f"{t + 1:06d}.jpg" for t in range(T)]
    for path in paths:
        cv2.imwrite(str(path), rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
    rows = []
    for t in range(T):
        odd = t % 2
        for head, (x, y) in enumerate([(40 + 40 * odd, 40), (60, 36 + 28 * odd), (40 + 40 * odd, 60)], 1):
            rows.append(f"{t + 1},{head},{x - 4},{y - 4},8,8,1,1,1")  # 8x8 boxes centred on (x, y)
    (seq / "gt" / "gt.txt").write_text("\n".join(rows) + "\n")
    test_on_cro.main(
        test_on_cro.CroConfig(
            dataset_location=str(tmp_path / "cro"),
            clip_len=12,
            min_clip_len=8,
            log_dir=str(tmp_path / "logs"),
            **TINY,
        )
    )
    (row,) = read_results(tmp_path / "logs")["videos"]
    assert row["name"] == "HT21-01_000000_000008" and row["num_points"] == 3 and row["num_frames"] == T
    # within every threshold at frames 2, 4, 6 only (9 of 21 entries); each head dies at frame 1 (3 of 24
    # entries alive); medians over 8 frames: (0 + 64) / 2 for heads 1 and 3, (0 + 74.67) / 2 for head 2
    expected = {f"d_{thr}": 900 / 21 for thr in (1, 2, 4, 8, 16)}
    expected |= {"d_avg": 900 / 21, "survival": 12.5, "median_l2": (32 + 112 / 3 + 32) / 3}
    check_metrics(row, expected)
    check_cv2_windows(still, paths)


def test_ctrl_c_between_videos_then_resume_evaluates_only_the_rest(tmp_path: Path) -> None:
    for k in range(3):
        scene = make_scene(16, 64, 96, np.random.default_rng(k), num_points=32)
        write_sequence(scene, tmp_path / "pod" / "test" / f"scene_{k}")
    flags = ["--dataset_location", str(tmp_path / "pod"), "--N", "8", "--S", "8", "--iters", "1"]
    flags += ["--image_size", "64,96", "--device", "cpu", "--random_weights"]

    def script(log_dir: str, *extra: str) -> list[str]:
        return [sys.executable, "test_on_pod.py", *flags, "--log_dir", str(tmp_path / log_dir), *extra]

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    straight = subprocess.run(
        script("straight"), cwd=REPO, capture_output=True, text=True, env=env, timeout=300
    )
    assert straight.returncode == 0, straight.stderr[-2000:]

    proc = subprocess.Popen(
        script("stopped"), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "step 000001/3" in line:
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130 and "Traceback" not in err, err[-2000:]
    stop = re.search(
        r"interrupted; (\d) video\(s\) done are kept in (\S+); go on by running", "".join(seen) + out
    )
    assert stop is not None and 1 <= int(stop[1]) < 3 and not (tmp_path / "stopped" / "results.json").exists()

    resumed = subprocess.run(
        script("stopped", "--resume"), cwd=REPO, capture_output=True, text=True, env=env, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"going on after {stop[1]} of 3 videos done earlier" in resumed.stdout
    evaluated = re.findall(r"step 00000(\d)/3", resumed.stdout)
    assert evaluated == [str(k) for k in range(int(stop[1]) + 1, 4)]

    def comparable(log_dir: str) -> dict:
        data = read_results(tmp_path / log_dir)
        data["config"].pop("resume"), data["config"].pop("log_dir")
        for row in data["videos"]:
            row.pop("rtime"), row.pop("itime")
        return data

    assert comparable("stopped") == comparable("straight")
    changed = subprocess.run(
        script("stopped", "--resume", "--iters", "2"),
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    progress = tmp_path / "stopped" / "videos.jsonl"
    assert changed.returncode == 1 and changed.stderr.splitlines()[-1].startswith(
        f"error: --resume: {progress} holds videos of another config (--iters 1 -> 2)"
    )
