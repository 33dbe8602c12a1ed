import dataclasses
import json
import logging
import re
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import tracking.evaluate
from datasets.sample import EvalSequence, UnreadableSequence
from nets.pips2 import PipsOutput
from nets.tracker import VideoTracks
from tracking.evaluate import (
    EvalConfig,
    EvalProtocol,
    EvalResults,
    Progress,
    evaluate_and_report,
    evaluate_dataset,
    evaluate_sequence,
    mean_metrics,
    results_table,
    scale_tracks,
    visibility_metrics,
    write_results,
)
from utils.config import UsageError

STORED_HW, EVAL_HW = (48, 128), (64, 96)  # x scales by 96/128 = 3/4, y by 64/48 = 4/3


class StillModel(torch.nn.Module):
    """Stands in for Pips: every point stays at its window's first position. It reads the frame index from
    the blue channel (10 per frame) and gives visibility logits +5, or -5 for point 1 from frame 4 on. It
    records the initial tracks, the frames and the iterations of each window."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.inits: list[torch.Tensor] = []
        self.windows: list[torch.Tensor] = []
        self.iters: list[int] = []

    def forward(self, trajs_e0, rgbs, iters=3, feat_init=None) -> PipsOutput:
        self.inits.append(trajs_e0.clone())
        self.windows.append(rgbs.clone())
        self.iters.append(iters)
        B, S, N, _ = trajs_e0.shape
        coords = trajs_e0[:, :1].expand(B, S, N, 2).clone()
        frame = (rgbs[:, :, 2, 0, 0] / 10).round()  # B,S
        vis = torch.full((B, S, N), 5.0)
        vis[:, :, 1] = torch.where(frame >= 4, -5.0, 5.0)
        feats = tuple(torch.zeros(B, S, N, 1) for _ in range(3))
        return PipsOutput(coords, [coords], feats, vis=vis)


def ramp_sequence(T: int = 5) -> EvalSequence:
    """Frames of STORED_HW whose red channel is 2x, green 3y and blue 10 t; three points.

    Point 0 moves 1.5 px/frame in x, point 1 moves 15/16 px/frame in y and is occluded from frame 3 on,
    point 2 is not valid at frame 0 (not a query).
    """
    H, W = STORED_HW
    yy, xx = np.mgrid[:H, :W]
    frames = np.stack([np.stack([2 * xx, 3 * yy, np.full_like(xx, 10 * t)], -1) for t in range(T)])
    t = np.arange(T, dtype=np.float32)
    # At EVAL_HW a still prediction is off by 3 t (point 0) and 5 t (point 1) normalised pixels:
    # 1.5 * 3/4 * 256/96 = 3 and 15/16 * 4/3 * 256/64 = 5.
    trajs = np.zeros((T, 3, 2), np.float32)
    trajs[:, 0] = np.stack([40 + 1.5 * t, np.full(T, 12.0)], -1)
    trajs[:, 1] = np.stack([np.full(T, 80.0), 24 + 15 / 16 * t], -1)
    trajs[:, 2] = [10.0, 10.0]
    valids = np.ones((T, 3), np.float32)
    valids[0, 2] = 0
    visibs = valids.copy()
    visibs[3:, 1] = 0
    return EvalSequence("ramp", frames.astype(np.uint8), STORED_HW, trajs, visibs, valids)


def test_scale_tracks_is_the_official_x_w_over_w() -> None:
    trajs = np.array([[[40.0, 12.0], [127.0, 47.0]]])
    scaled = scale_tracks(trajs, STORED_HW, EVAL_HW)
    np.testing.assert_allclose(scaled, [[[30.0, 16.0], [95.25, 188 / 3]]], rtol=1e-6)
    assert scaled.dtype == np.float32
    np.testing.assert_array_equal(scale_tracks(trajs, EVAL_HW, EVAL_HW), trajs)


# at model pixel (x=2, y=1): red = 2 * ((2 + 0.5) * 128/96 - 0.5) = 17/3 and
# green = 3 * ((1 + 0.5) * 48/64 - 0.5) = 1.875; cv2.resize works on uint8 frames and rounds them to 6 and 2
@pytest.mark.parametrize("resize, red, green", [("bilinear", 17 / 3, 1.875), ("cv2", 6.0, 2.0)])
def test_a_sequence_evaluated_at_another_resolution_by_hand(resize: str, red: float, green: float) -> None:
    model = StillModel()
    row, trajs_e = evaluate_sequence(model, ramp_sequence(), EvalProtocol(EVAL_HW, resize, S=3, iters=2))
    # the queries: frame-0 ground truth scaled by (3/4, 4/3)
    torch.testing.assert_close(model.inits[0][0, 0], torch.tensor([[30.0, 16.0], [60.0, 32.0]]))
    assert [w.shape[1] for w in model.windows] == [3, 3] and model.iters == [2, 2]  # windows [0,3), [2,5)
    for window in model.windows:
        assert window.shape[-2:] == EVAL_HW
        torch.testing.assert_close(window[0, :, 0, 1, 2], torch.full((3,), red))
        torch.testing.assert_close(window[0, :, 1, 1, 2], torch.full((3,), green))
    assert (row["name"], row["num_frames"], row["num_points"]) == ("ramp", 5, 2)
    assert trajs_e.shape == (5, 2, 2)
    # errors at frames 1..4: point 0 3, 6, 9, 12 and point 1 5, 10, 15, 20 (normalised pixels)
    expected = {"d_1": 0.0, "d_2": 0.0, "d_4": 12.5, "d_8": 37.5, "d_16": 87.5, "d_avg": 27.5}
    expected |= {"survival": 90.0, "median_l2": 8.0}  # point 1 dies at frame 4; medians 6 and 10
    # visible: point 0's four errors and point 1's 5, 10; occluded: 15, 20
    expected |= {"d_avg_visible": 100 / 3, "d_avg_occluded": 10.0}
    expected |= {"occlusion_accuracy": 87.5}  # point 1 at frame 3 is occluded but predicted visible
    # TAP-Vid jaccard in the 256x256 space (the same errors): 6 visible entries, 7 predicted visible (point 1
    # at frame 3 is occluded). True/false positives within 1, 2: 0/7; 4: 1/6; 8: 3/4; 16: 6/1.
    # Each jaccard is true positives / (visible + false positives): 0, 0, 1/(6+6), 3/(6+4), 6/(6+1).
    expected |= {"average_jaccard": (1 / 12 + 3 / 10 + 6 / 7) / 5 * 100}
    for k, v in expected.items():
        assert row[k] == pytest.approx(v), k


def test_without_occluded_frames_and_without_a_visibility_head() -> None:
    seq = ramp_sequence()
    seq.visibs[:] = 1

    class NoHead(StillModel):
        def forward(self, *args, **kwargs) -> PipsOutput:
            return super().forward(*args, **kwargs)._replace(vis=None)

    row, _ = evaluate_sequence(NoHead(), seq, EvalProtocol(EVAL_HW, S=8, iters=1))
    assert row["d_avg_occluded"] is None and "occlusion_accuracy" not in row
    assert row["d_avg_visible"] == row["d_avg"] == pytest.approx(27.5)


def test_extra_metrics_see_the_guarded_model_and_the_frames() -> None:
    seen = {}

    def extra(model, frames, seq) -> dict:
        seen.update(model=model, size=frames.image_size, resize=frames.resize, seq=seq.name)
        return {"more": 1.5}

    model = StillModel()
    protocol = EvalProtocol(EVAL_HW, resize="cv2", S=8, iters=1, extra=extra)
    row, _ = evaluate_sequence(model, ramp_sequence(), protocol)
    assert row["more"] == 1.5 and row["name"] == "ramp" and row["d_avg"] == pytest.approx(27.5)
    assert seen["model"].model is model and (seen["size"], seen["resize"], seen["seq"]) == (
        EVAL_HW,
        "cv2",
        "ramp",
    )


class ListDataset(list):
    """An EvalDataset: a list of sequences (or errors to raise) and the sequences skipped while indexing."""

    def __init__(self, items: list, skipped: list[str] | None = None) -> None:
        super().__init__(items)
        self.skipped = skipped or []

    def __getitem__(self, index: int) -> EvalSequence:
        item = super().__getitem__(index)
        if isinstance(item, Exception):
            raise item
        return item


class RecordingLog:
    """Stands in for utils.logger.Logger: records what is logged (images and gifs by shape, and their
    pixels in `arrays`)."""

    def __init__(self, log_dir: Path | None = None) -> None:
        self.scalar_calls: list[tuple[int, dict, str]] = []
        self.images: list[tuple[str, tuple, int]] = []
        self.gifs: list[tuple[str, tuple, int]] = []
        self.arrays: list[np.ndarray] = []

    def scalars(self, step: int, metrics: dict, prefix: str = "") -> None:
        self.scalar_calls.append((step, metrics, prefix))

    def image(self, name: str, image: np.ndarray, step: int) -> None:
        self.images.append((name, image.shape, step))
        self.arrays.append(image)

    def gif(self, name: str, frames: np.ndarray, step: int) -> None:
        self.gifs.append((name, frames.shape, step))
        self.arrays.append(frames)

    def close(self) -> None:
        pass


def test_dataset_loop_skips_unreadable_sequences_and_averages_the_rest(caplog, capsys) -> None:
    good = ramp_sequence()
    shifted = ramp_sequence()
    shifted.name = "shifted"
    shifted.trajs[:, 1, 1] = 24  # point 1 still too: errors 3 t for point 0 only
    nothing = ramp_sequence()
    nothing.name = "nothing"
    nothing.valids[0] = 0
    dataset = ListDataset(
        [good, UnreadableSequence("seq_x: cannot read anno.npz"), nothing, shifted, good],
        ["seq_y: no frames"],
    )
    log = RecordingLog()
    with caplog.at_level(logging.WARNING):
        results = evaluate_dataset(
            StillModel(), dataset, EvalProtocol(EVAL_HW, S=8, iters=1), num_videos=4, log=log
        )
    assert [v["name"] for v in results.videos] == ["ramp", "shifted"]  # the fifth is past num_videos
    assert results.skipped == [
        "seq_y: no frames",
        "seq_x: cannot read anno.npz",
        "nothing: no point valid at frame 0",
    ]
    assert [r.getMessage() for r in caplog.records if r.name == "tracking.evaluate"] == [
        "skipped: seq_x: cannot read anno.npz",
        "video nothing has no point valid at frame 0; skipped",
    ]
    # shifted: point 0 errors 3, 6, 9, 12 and point 1 none: d_1 .. d_16 = 4/8, 4/8, 5/8, 6/8, 8/8
    assert results.videos[1]["d_avg"] == pytest.approx(67.5)
    assert results.mean["d_avg"] == pytest.approx((27.5 + 67.5) / 2)
    assert results.mean["d_avg_occluded"] == pytest.approx(
        (10 + 100) / 2
    )  # shifted's occluded frames are exact
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2].startswith("ramp; step 000001/4; rtime ")
    assert lines[-2].endswith("d_x 27.5; sur_x 90.0; med_x 8.0")
    assert lines[-1].startswith("shifted; step 000004/4; ") and lines[-1].endswith(
        "d_x 47.5; sur_x 95.0; med_x 5.5"
    )
    assert [(step, prefix) for step, _, prefix in log.scalar_calls] == [(0, "metrics/"), (3, "metrics/")]
    assert "name" not in log.scalar_calls[0][1] and log.scalar_calls[0][1]["d_avg"] == pytest.approx(27.5)
    assert log.images == [] and log.gifs == []
    with pytest.raises(ValueError, match=r"no sequence could be evaluated \(3 skipped\)"):
        evaluate_dataset(StillModel(), ListDataset([nothing, nothing], ["a"]), EvalProtocol(EVAL_HW))


def test_gifs_show_the_tracks_on_frames_sampled_over_the_video() -> None:
    log = RecordingLog()
    seqs = [ramp_sequence(T=5), ramp_sequence(T=70)]
    evaluate_dataset(
        StillModel(), ListDataset(seqs), EvalProtocol(EVAL_HW, S=40, iters=1), log=log, log_gifs=True
    )
    H, W = EVAL_HW
    assert log.images == [
        ("0_inputs/trajs_g_on_rgb0", (H, W, 3), 0),
        ("2_outputs/trajs_e_on_rgb0", (H, W, 3), 0),
        ("0_inputs/trajs_g_on_rgb0", (H, W, 3), 1),
        ("2_outputs/trajs_e_on_rgb0", (H, W, 3), 1),
    ]
    assert log.gifs == [
        ("2_outputs/trajs_e_on_rgbs", (5, H, W, 3), 0),
        ("2_outputs/trajs_e_on_rgbs", (64, H, W, 3), 1),
    ]
    # the gif's frames are the evaluated ones as uint8 (cv2 rule, see the resolution test): away from the
    # tracks, red 2x, green 3y and blue 10 t at the model's pixels, (0, 0, 10 t) in the corner
    gif = log.arrays[2]
    assert gif.dtype == np.uint8
    for t in range(5):
        assert gif[t, 1, 2].tolist() == [6, 2, 10 * t] and gif[t, 0, 0].tolist() == [0, 0, 10 * t]


def test_tracks_are_drawn_only_where_the_ground_truth_is_valid() -> None:
    seq = ramp_sequence()
    seq.valids[1:] = 0  # the queries are valid at frame 0 only: no segment of either track is drawn
    log = RecordingLog()
    evaluate_dataset(
        StillModel(), ListDataset([seq]), EvalProtocol(EVAL_HW, S=8, iters=1), log=log, log_gifs=True
    )
    trajs_g_image, trajs_e_image, _ = log.arrays
    rgb0 = cv2.resize(seq.frames[0], EVAL_HW[::-1], interpolation=cv2.INTER_LINEAR)  # the protocol's cv2 rule
    np.testing.assert_array_equal(trajs_g_image, rgb0)
    np.testing.assert_array_equal(trajs_e_image[30:], rgb0[30:])  # below the d_avg box


def test_mean_table_and_json_keep_missing_values_as_null(tmp_path: Path) -> None:
    videos = [
        {"name": "a", "d_avg": 10.0, "aj": None, "rtime": 1.0},
        {"name": "b", "d_avg": float("nan"), "aj": None},
    ]
    videos.append({"name": "c", "d_avg": 30.0, "aj": None, "num_frames": 7})
    mean = mean_metrics(videos)
    assert mean == {"d_avg": 20.0, "aj": None}
    results = EvalResults(videos, mean, skipped=["scene_0007: cannot read anno.npz"])
    table = results_table(results).splitlines()
    assert table[1] == "| metric           |  mean |"
    assert "| d_avg            | 20.00 |" in table and "| aj               |   n/a |" in table
    assert "| videos evaluated |     3 |" in table and "| videos skipped   |     1 |" in table
    path = write_results(
        tmp_path / "out" / "run" / "results.json",
        {"S": 8, "bad": [float("inf"), {"x": float("nan")}]},
        results,
    )
    assert path == tmp_path / "out" / "run" / "results.json"
    data = json.loads(path.read_text())
    assert data["config"] == {"S": 8, "bad": [None, {"x": None}]} and data["mean"] == {
        "d_avg": 20.0,
        "aj": None,
    }
    assert data["videos"][1] == {"name": "b", "d_avg": None, "aj": None}
    assert data["num_videos"] == 3 and data["skipped"] == ["scene_0007: cannot read anno.npz"]
    assert path.read_text().startswith('{\n  "config": {\n    "S": 8,')


def test_evaluate_and_report_builds_the_model_from_the_flags(tmp_path: Path, monkeypatch, capsys) -> None:
    built = []

    def fake_build_model(checkpoint, device, fast, log):
        built.append((checkpoint, device, fast))
        log("model: a stand-in")
        return StillModel()

    monkeypatch.setattr(tracking.evaluate, "build_model", fake_build_model)
    config = EvalConfig(init_ckpt="ckpts", device="cpu", fast=False, log_dir=str(tmp_path / "logs"))
    results = evaluate_and_report(ListDataset([ramp_sequence()]), EvalProtocol(EVAL_HW, S=8, iters=1), config)
    assert built == [("ckpts", "cpu", False)] and results.mean["d_avg"] == pytest.approx(27.5)
    data = json.loads((tmp_path / "logs" / "results.json").read_text())
    assert data["config"] == json.loads(json.dumps(dataclasses.asdict(config)))
    assert data["config"]["init_ckpt"] == "ckpts" and data["mean"]["d_avg"] == pytest.approx(27.5)
    assert data["skipped"] == [] and data["num_videos"] == 1
    out = capsys.readouterr().out
    assert "model: a stand-in" in out and re.search(r"\| d_avg +\| +27\.50 \|", out)
    assert f"results: {tmp_path / 'logs' / 'results.json'}" in out
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "logs").iterdir())
    config = dataclasses.replace(config, random_weights=True, fast=True, max_videos=1)
    evaluate_and_report(
        ListDataset([ramp_sequence(), ramp_sequence()], ["gone"]), EvalProtocol(EVAL_HW), config
    )
    assert built[-1] == (None, "cpu", True)
    data = json.loads((tmp_path / "logs" / "results.json").read_text())
    assert data["num_videos"] == 1 and data["skipped"] == ["gone"]
    assert "skipped: gone" in capsys.readouterr().out


def test_eval_config_checks_the_protocol_before_any_work() -> None:
    assert EvalConfig().image_size == (512, 896) and EvalConfig(image_size=(64, 96)).image_size == (64, 96)
    with pytest.raises(UsageError, match=r"^--image_size sides must be at least 64 pixels, got 32x64$"):
        EvalConfig(image_size=(32, 64))
    for bad in [(64, 100), (48, 64)]:
        with pytest.raises(
            UsageError, match=rf"^--image_size sides must be positive multiples of 32, got {bad[0]}x{bad[1]}$"
        ):
            EvalConfig(image_size=bad)
    with pytest.raises(UsageError, match=r"^--image_size must be two positive integers H,W, got \(0, 64\)$"):
        EvalConfig(image_size=(0, 64))
    for name, value in [("S", 1), ("iters", 0), ("max_videos", 0)]:
        with pytest.raises(UsageError, match=f"^--{name} must be at least"):
            EvalConfig(**{name: value})


def test_a_dataset_without_a_skipped_list() -> None:
    results = evaluate_dataset(StillModel(), [ramp_sequence()], EvalProtocol(EVAL_HW, S=8, iters=1))
    assert results.skipped == [] and len(results.videos) == 1


def test_reading_and_model_time_are_told_apart(monkeypatch) -> None:
    # a clock that ticks one second per reading: each window's read takes one tick, the tracking of the 5
    # frames (windows [0, 3) and [2, 5)) five in all: 2 s reading, 3 s the rest
    ticks = iter(range(100, 1000))  # a clock far from zero: differences, not sums, of its readings
    monkeypatch.setattr(time, "perf_counter", lambda: float(next(ticks)))
    row, _ = evaluate_sequence(StillModel(), ramp_sequence(), EvalProtocol(EVAL_HW, S=3, iters=1))
    assert (row["rtime"], row["itime"]) == (2.0, 3.0)


class Bar:
    """Stands in for tqdm: records its settings and the counts it is given."""

    made: list["Bar"] = []
    lines: list[str] = []

    def __init__(self, iterable=None, *, total=None, desc=None, unit="it", leave=True) -> None:
        self.iterable, self.total, self.desc, self.unit, self.leave, self.n = (
            iterable,
            total,
            desc,
            unit,
            leave,
            0,
        )
        Bar.made.append(self)

    def __iter__(self):
        for x in self.iterable:
            self.n += 1
            yield x

    def __enter__(self) -> "Bar":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def update(self, n: int = 1) -> None:
        self.n += n

    @staticmethod
    def write(line: str) -> None:
        Bar.lines.append(line)


def test_progress_bars_count_each_frame_and_video_once(monkeypatch) -> None:
    Bar.made, Bar.lines = [], []
    monkeypatch.setattr(tracking.evaluate, "tqdm", Bar)
    evaluate_dataset(
        StillModel(), ListDataset([ramp_sequence(7), ramp_sequence(5)]), EvalProtocol(EVAL_HW, S=3, iters=1)
    )
    videos, *frames = Bar.made
    assert (videos.desc, videos.unit, videos.n) == ("videos", "video", 2)
    # one bar per sequence, named after it, gone when done, that ends at the sequence's frame count
    assert [(b.desc, b.unit, b.leave, b.total, b.n) for b in frames] == [
        ("ramp", "frame", False, 7, 7),
        ("ramp", "frame", False, 5, 5),
    ]
    assert [line.split(";")[:2] for line in Bar.lines] == [
        ["ramp", " step 000001/2"],
        ["ramp", " step 000002/2"],
    ]


def test_visibility_metrics_at_the_thresholds_by_hand() -> None:
    # 64x128 frames, so the 256x256 space scales x by 2 and y by 4. Frame 0 is exact; at frame 1 points 0..3
    # are off by exactly 1 (256 space) in +x, -x, +y, -y; point 4 is occluded and predicted at probability
    # 0.5 (occluded); point 5 is exact but its ground truth is not valid, and predicted visible
    size = (64, 128)
    trajs_g = np.array([[64.0, 16.0], [64.0, 16.0], [40.0, 32.0], [40.0, 32.0], [10.0, 10.0], [100.0, 50.0]])
    trajs_g = np.repeat(trajs_g[None], 2, axis=0).astype(np.float32)  # T,N,2
    tracks = torch.from_numpy(trajs_g.copy())[None]  # 1,T,N,2
    tracks[0, 1, :4] += torch.tensor([[0.5, 0.0], [-0.5, 0.0], [0.0, 0.25], [0.0, -0.25]])
    visibs = np.ones((2, 6), np.float32)
    visibs[1, 4] = 0
    valids = np.ones((2, 6), np.float32)
    valids[1, 5] = 0
    vis = torch.full((1, 2, 6), 3.0)
    vis[0, 1, 4] = 0.0  # sigmoid: exactly 0.5
    metrics = visibility_metrics(VideoTracks(tracks, vis), trajs_g, visibs, valids, size)
    # valid entries at frame 1: four at exactly 1 (not within 1) and point 4 exact: d_1 20, d_2..d_16 100
    assert metrics["d_avg"] == pytest.approx((20 + 4 * 100) / 5)
    assert metrics["d_avg_visible"] == pytest.approx(80.0) and metrics["d_avg_occluded"] == 100.0
    assert metrics["occlusion_accuracy"] == 100.0  # 0.5 counts as occluded; point 5 is not scored
    # TAP-Vid: 4 visible ground-truth entries; predicted visible: those 4 and point 5 (not visible, since
    # not valid: a false positive). Within 1: none, 5 false positives; within 2..16: 4 true, 1 false
    assert metrics["average_jaccard"] == pytest.approx((0 / 9 + 4 * 4 / 5) / 5 * 100)


def test_the_visible_and_occluded_split_leaves_the_query_frame_out_as_d_avg_does() -> None:
    # Frame 0 is the query: occluded there for every point and far off, exact and visible afterwards. The
    # occluded split has no scored frame (None, not 0), and the far-off query frame costs neither split
    size = (64, 128)
    trajs_g = np.zeros((3, 2, 2), np.float32) + 20.0  # T,N,2
    tracks = torch.from_numpy(trajs_g.copy())[None]
    tracks[0, 0] += 50.0
    visibs = np.ones((3, 2), np.float32)
    visibs[0] = 0
    valids = np.ones((3, 2), np.float32)
    metrics = visibility_metrics(VideoTracks(tracks, None), trajs_g, visibs, valids, size)
    assert metrics["d_avg_occluded"] is None
    assert metrics["d_avg_visible"] == metrics["d_avg"] == 100.0
    visibs[1, 1] = 0  # one occluded, exact entry after the query frame
    metrics = visibility_metrics(VideoTracks(tracks, None), trajs_g, visibs, valids, size)
    assert metrics["d_avg_occluded"] == 100.0 and metrics["d_avg_visible"] == 100.0


def test_evaluate_and_report_logs_metrics_and_gifs(tmp_path: Path, monkeypatch) -> None:
    logs = []

    def recording_logger(log_dir: Path) -> RecordingLog:
        logs.append(RecordingLog(log_dir))
        return logs[-1]

    monkeypatch.setattr(tracking.evaluate, "build_model", lambda checkpoint, device, fast, log: StillModel())
    monkeypatch.setattr(tracking.evaluate, "Logger", recording_logger)
    config = EvalConfig(
        init_ckpt="ckpts", device="cpu", fast=False, log_dir=str(tmp_path / "logs"), log_gifs=True
    )
    evaluate_and_report(ListDataset([ramp_sequence()]), EvalProtocol(EVAL_HW, S=8, iters=1), config)
    (log,) = logs
    assert [step for step, _, _ in log.scalar_calls] == [0]
    assert [name for name, _, _ in log.gifs] == ["2_outputs/trajs_e_on_rgbs"]


class CountingModel(StillModel):
    """StillModel that counts its windows and meets Ctrl-C on window number `stop_at` (None: never)."""

    def __init__(self, stop_at: int | None = None) -> None:
        super().__init__()
        self.stop_at = stop_at

    def forward(self, *args, **kwargs) -> PipsOutput:
        if len(self.windows) == self.stop_at:
            raise KeyboardInterrupt
        return super().forward(*args, **kwargs)


def test_progress_keeps_finished_videos_and_a_resumed_run_evaluates_only_the_rest(tmp_path: Path) -> None:
    shifted = ramp_sequence()
    shifted.name = "shifted"
    shifted.trajs[:, 1, 1] = 24
    nothing = ramp_sequence()
    nothing.name = "nothing"
    nothing.valids[0] = 0
    dataset = ListDataset([ramp_sequence(), nothing, shifted, ramp_sequence()], [])
    protocol, config = EvalProtocol(EVAL_HW, S=8, iters=1), {"S": 8, "iters": 1, "resume": False}
    straight = evaluate_dataset(CountingModel(), dataset, protocol)

    with pytest.raises(KeyboardInterrupt):  # one window per video: the second call is the third video's
        evaluate_dataset(
            CountingModel(stop_at=1), dataset, protocol, progress=Progress(tmp_path, config, False)
        )
    lines = (tmp_path / "videos.jsonl").read_text().splitlines()
    assert json.loads(lines[0]) == {"config": {"S": 8, "iters": 1}}  # resume is free to change
    assert [json.loads(line)["index"] for line in lines[1:]] == [0, 1]
    with (tmp_path / "videos.jsonl").open("a") as f:
        f.write('{"index": 2, "row": {"na')  # a line a kill cut short: that video runs again

    model = CountingModel()
    resumed = evaluate_dataset(
        model, dataset, protocol, progress=Progress(tmp_path, config | {"resume": True}, True)
    )
    assert len(model.windows) == 2  # videos 2 and 3 only
    untimed = [
        [{k: v for k, v in row.items() if k not in ("rtime", "itime")} for row in run.videos]
        for run in (resumed, straight)
    ]
    assert untimed[0] == untimed[1] and resumed.skipped == straight.skipped
    assert resumed.mean == pytest.approx(straight.mean)

    with pytest.raises(UsageError, match=r"holds videos of another config \(--iters 1 -> 2\); drop --resume"):
        Progress(tmp_path, {"S": 8, "iters": 2}, True)
    fresh = Progress(tmp_path, {"S": 8, "iters": 2}, False)
    assert fresh.done == {} and len((tmp_path / "videos.jsonl").read_text().splitlines()) == 5  # kept until
    fresh.record(0, skipped="x")  # the first video of the new run ends
    assert (tmp_path / "videos.jsonl").read_text().splitlines()[1:] == ['{"index": 0, "skipped": "x"}']
    (tmp_path / "videos.jsonl").write_text("not json\n")
    with pytest.raises(ValueError, match="its first line is not a config"):
        Progress(tmp_path, config, True)
    assert Progress(tmp_path / "new", config, True).done == {}  # nothing to resume: a new run
