"""The evaluation loop shared by test_on_pod.py, test_on_tap.py and test_on_cro.py.

Every dataset reader gives `EvalSequence`s (datasets/sample.py). Per sequence: the points valid at frame 0
are the queries (the official frame-0 protocol); the frames are read window by window at the evaluated
resolution; the tracks are scored with the PIPs++ metrics at that resolution (ground truth scaled x*W'/W,
y*H'/H, the official convention that keeps the published numbers) plus any extra metrics of the script.
Sequences that cannot be read are skipped with one warning each and reported beside the results.
"""

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from prettytable import PrettyTable
from tqdm import tqdm

from datasets.sample import EvalSequence, UnreadableSequence
from nets.pips2 import Pips
from nets.tracker import VideoTracks, WindowModel, track_from_first_frame
from tracking.frames import MIN_SIDE, Frames, open_frames, require_size
from tracking.onnx_backend import OnnxWindow
from tracking.predictor import Float16Guard, build_model
from tracking.settings import expected_time_line
from utils.checkpoint import REFERENCE_DIR
from utils.config import INTERRUPT_EXIT, UsageError, knob, require
from utils.logger import Logger, RunningMeans
from utils.metrics import compute_pips_metrics, compute_tapvid_metrics, occlusion_accuracy
from utils.vis import draw_text, draw_tracks, draw_trajs_on_image

logger = logging.getLogger(__name__)

SIZE_MULTIPLE = 32  # the official scripts assert image sides divisible by 32
# the keys of a result row that are not metrics
ROW_INFO = ("name", "num_frames", "num_points", "rtime", "itime")
MAX_GIF_FRAMES = 64  # frames sampled over a video for its TensorBoard gif
PROGRESS_FILE = "videos.jsonl"  # in log_dir: the config, then one line per video done
# settings that do not change a video's result, so a resumed run may change them
FREE_TO_CHANGE = ("resume", "max_videos", "log_gifs")

Metrics = dict[str, float | None]
# (model, frames, sequence) -> more metrics of that sequence, e.g. the TAP-Vid benchmark's
ExtraMetrics = Callable[[WindowModel, Frames, EvalSequence], Metrics]


class EvalDataset(Protocol):
    """A reader of evaluation sequences; `skipped` lists the ones found unreadable while indexing."""

    skipped: list[str]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> EvalSequence: ...


@dataclass(frozen=True)
class EvalConfig:
    """The settings every evaluation script shares: the official protocol by default."""

    dataset_location: str = knob("", "the dataset's folder")
    S: int = knob(128, "frames per window")
    iters: int = knob(16, "refinement iterations per window")
    image_size: tuple[int, int] = knob(
        (512, 896), f"H,W the frames are resized to (multiples of {SIZE_MULTIPLE})"
    )
    max_videos: int | None = knob(None, "evaluate only the first videos (None = all)")
    init_ckpt: str = knob(
        REFERENCE_DIR, "checkpoint, or folder of model-*.pth (the newest)", aliases=("init_dir",)
    )
    random_weights: bool = knob(False, "skip the checkpoint (smoke runs)")
    onnx: str = knob("", "run the network in onnxruntime from this export_onnx.py file (at these settings)")
    device: str = knob("", "e.g. cuda, cuda:1, cpu; '' = the best available")
    fast: bool = knob(True, "the fast path (float16, fused kernels) on CUDA; CPU always runs exact float32")
    log_dir: str = knob("./logs_eval", "TensorBoard logs and results.json")
    log_gifs: bool = knob(False, "also log tracks on frames to TensorBoard")
    resume: bool = knob(
        False, f"go on from the videos an earlier run of this config finished ({PROGRESS_FILE})"
    )

    def __post_init__(self) -> None:
        require(self.S >= 2, "S", "at least 2", self.S)
        require(self.iters >= 1, "iters", "at least 1", self.iters)
        require(
            self.max_videos is None or self.max_videos >= 1,
            "max_videos",
            "at least 1 (or none)",
            self.max_videos,
        )
        require_size(self.image_size, multiple=SIZE_MULTIPLE, least=MIN_SIDE)


def scale_tracks(trajs: np.ndarray, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> np.ndarray:
    """Pixel tracks ...,2 (x,y) of an image of size from_hw, in an image resized to to_hw (x*W'/W, y*H'/H)."""
    sx = to_hw[1] / from_hw[1]
    sy = to_hw[0] / from_hw[0]
    return (np.asarray(trajs, np.float32) * np.array([sx, sy], np.float32)).astype(np.float32)


@dataclass
class EvalResults:
    videos: list[dict[str, Any]] = field(default_factory=list)  # name, num_frames, num_points, times, metrics
    mean: Metrics = field(default_factory=dict)  # per metric, the mean over videos of its finite values
    skipped: list[str] = field(default_factory=list)  # one line per sequence that could not be read


def _to_uint8_frames(rgbs: torch.Tensor) -> np.ndarray:
    """1,T,3,H,W float 0..255 -> T,H,W,3 uint8."""
    return rgbs[0].permute(0, 2, 3, 1).round().clamp(0, 255).to(torch.uint8).cpu().numpy()


def _log_visuals(
    log: Logger,
    frames: Frames,
    trajs_g: np.ndarray,
    valids: np.ndarray,
    trajs_e: np.ndarray,
    d_avg: float,
    step: int,
) -> None:
    """Tracks on frame 0 (ground truth and estimate) and a gif of the estimate over sampled frames."""
    T = frames.num_frames
    rgb0 = _to_uint8_frames(frames.get(0, 1))[0]  # H,W,3
    log.image("0_inputs/trajs_g_on_rgb0", draw_trajs_on_image(rgb0, trajs_g, valids), step)
    on_rgb0 = draw_trajs_on_image(rgb0, trajs_e, valids)
    log.image("2_outputs/trajs_e_on_rgb0", draw_text(on_rgb0, f"d_avg {d_avg:.1f}"), step)
    times = np.unique(np.linspace(0, T - 1, min(T, MAX_GIF_FRAMES)).round().astype(int))
    sampled = np.concatenate([_to_uint8_frames(frames.get(t, t + 1)) for t in times])  # T',H,W,3
    log.gif("2_outputs/trajs_e_on_rgbs", draw_tracks(sampled, trajs_e[times]), step)


@dataclass
class EvalProtocol:
    """How a script evaluates: the resolution and resize rule of its official protocol, the windows, and
    its extra metrics."""

    image_size: tuple[int, int]
    resize: str = "cv2"  # "cv2" (PointOdyssey, CroHD) or "bilinear" (TAP-Vid): see tracking/frames.py
    S: int = 128
    iters: int = 16
    extra: ExtraMetrics | None = None


class Progress:
    """The videos an evaluation has finished: <log_dir>/videos.jsonl holds its config on the first line and
    then one line per video (its result row, or why it was skipped), written as each ends. With `resume`,
    the rows of an earlier run of the same config are read back so that only the other videos run; without,
    the file starts anew with the first video done."""

    def __init__(self, log_dir: str | Path, config: dict[str, Any], resume: bool) -> None:
        self.path = Path(log_dir) / PROGRESS_FILE
        self.config = json.loads(json.dumps({k: v for k, v in config.items() if k not in FREE_TO_CHANGE}))
        self.done: dict[int, dict[str, Any]] = {}
        self.started = resume and self.path.is_file()
        if self.started:
            self._read()

    def _read(self) -> None:
        lines = self.path.read_text().splitlines()
        try:
            earlier = json.loads(lines[0])["config"]
        except (IndexError, KeyError, TypeError, json.JSONDecodeError):
            raise ValueError(f"cannot resume from {self.path}: its first line is not a config") from None
        changed = [k for k in self.config if earlier.get(k) != self.config[k]]
        if changed:
            listed = ", ".join(f"--{k} {earlier.get(k)} -> {self.config[k]}" for k in changed)
            raise UsageError(
                f"--resume: {self.path} holds videos of another config ({listed}); drop --resume"
            )
        for line in lines[1:]:
            try:
                entry = json.loads(line)
                self.done[int(entry["index"])] = entry
            except (KeyError, TypeError, ValueError, json.JSONDecodeError):
                break  # a line cut short by a kill: that video runs again

    def record(self, index: int, row: dict[str, Any] | None = None, skipped: str | None = None) -> None:
        """Adds one video's row, or the reason it was skipped, to the file (durably, before returning)."""
        entry = (
            {"index": index, "row": _finite_or_none(row)}
            if skipped is None
            else {"index": index, "skipped": skipped}
        )
        if not self.started:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({"config": self.config}) + "\n")
            self.started = True
        with self.path.open("a") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.done[index] = entry


def evaluate_sequence(
    model: Pips, seq: EvalSequence, protocol: EvalProtocol, log_visuals: Callable | None = None
) -> tuple[dict[str, Any], np.ndarray]:
    """Track one sequence from its points valid at frame 0 and score it.

    Returns:
        The result row and trajs_e T,N',2. The row holds name, num_frames, num_points, rtime (seconds
        reading frames), itime (seconds in the model), the PIPs++ metrics at the evaluated resolution,
        d_avg_visible and d_avg_occluded (the same d_avg over the frames where the point is visible, or
        occluded; None where there are none), with a visibility head the occlusion_accuracy and
        average_jaccard, then the protocol's extra metrics.
    """
    device = next(model.parameters(), torch.empty(0)).device  # an ONNX window holds no parameters: CPU
    size = protocol.image_size
    keep = seq.valids[0] > 0  # N
    trajs_g = scale_tracks(seq.trajs[:, keep], seq.image_hw, size)  # T,N',2
    valids = np.asarray(seq.valids[:, keep], np.float32)  # T,N'
    visibs = np.asarray(seq.visibs[:, keep], np.float32)  # T,N'
    guarded = Float16Guard(model)
    with open_frames(seq.frames, size, device, resize=protocol.resize) as frames:
        T = frames.num_frames
        xy = torch.from_numpy(np.ascontiguousarray(trajs_g[0]))[None].to(device)  # 1,N',2
        with tqdm(total=T, desc=seq.name, unit="frame", leave=False) as bar:
            bar.update(1)  # frame 0 holds the queries
            began = time.perf_counter()
            out = track_from_first_frame(guarded, frames, xy, protocol.S, protocol.iters, bar.update)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            total = time.perf_counter() - began
        row: dict[str, Any] = {"name": seq.name, "num_frames": T, "num_points": int(keep.sum())}
        row |= {"rtime": frames.read_seconds, "itime": total - frames.read_seconds}
        row |= visibility_metrics(out, trajs_g, visibs, valids, size)
        if protocol.extra is not None:
            row |= protocol.extra(guarded, frames, seq)
        trajs_e = out.tracks[0].cpu().numpy()  # T,N',2
        if log_visuals is not None:
            log_visuals(frames, trajs_g, valids, trajs_e, row["d_avg"])
    return row, trajs_e


def visibility_metrics(
    out: VideoTracks, trajs_g: np.ndarray, visibs: np.ndarray, valids: np.ndarray, size: tuple[int, int]
) -> Metrics:
    """PIPs++ metrics of tracks (1,T,N,2) against ground truth (T,N,...) at `size`, d_avg over the visible and
    over the occluded frames, and the occlusion accuracy where the model estimates visibility."""
    gt = torch.from_numpy(trajs_g)[None]  # 1,T,N,2
    metrics: Metrics = compute_pips_metrics(out.tracks, gt, torch.from_numpy(valids)[None], *size)
    for name, where in (("visible", visibs), ("occluded", 1 - visibs)):
        mask = torch.from_numpy(valids * where)[None]  # 1,T,N
        has_any = bool(mask[:, 1:].sum() > 0)
        metrics[f"d_avg_{name}"] = (
            compute_pips_metrics(out.tracks, gt, mask, *size)["d_avg"] if has_any else None
        )
    if out.vis is not None:
        visible_e = torch.sigmoid(out.vis.float())  # 1,T,N
        metrics["occlusion_accuracy"] = occlusion_accuracy(visible_e, visibs[None], valids[None])
        metrics["average_jaccard"] = frame0_jaccard(out.tracks, visible_e, trajs_g, visibs * valids, size)
    return metrics


def frame0_jaccard(
    tracks: torch.Tensor,
    visible_e: torch.Tensor,
    trajs_g: np.ndarray,
    visibs: np.ndarray,
    size: tuple[int, int],
) -> float:
    """TAP-Vid's Average Jaccard (percent, 256x256 space, frames after the query) of queries at frame 0:
    tracks 1,T,N,2 and predicted visibility 1,T,N against ground truth T,N,2 and visibility T,N."""
    gt = scale_tracks(trajs_g, size, (256, 256))[None].transpose(0, 2, 1, 3)  # 1,N,T,2
    pred = scale_tracks(tracks.float().cpu().numpy(), size, (256, 256)).transpose(0, 2, 1, 3)  # 1,N,T,2
    N = gt.shape[1]
    scores = compute_tapvid_metrics(
        np.zeros((1, N, 3)),  # (t, y, x): every query at frame 0
        (visibs == 0).T[None],  # 1,N,T
        gt,
        (visible_e <= 0.5).cpu().numpy().transpose(0, 2, 1),  # 1,N,T
        pred,
        query_mode="first",
    )
    return float(scores["average_jaccard"][0]) * 100


def evaluate_dataset(
    model: Pips,
    dataset: EvalDataset,
    protocol: EvalProtocol,
    *,
    num_videos: int | None = None,
    log: Logger | None = None,
    log_gifs: bool = False,
    progress: Progress | None = None,
) -> EvalResults:
    """Evaluate the first `num_videos` sequences of `dataset` (None = all) one by one (evaluate_sequence).

    Prints the official line per video (running means over videos) above the progress bars. A sequence that
    cannot be read (datasets.sample.UnreadableSequence) or has no point valid at frame 0 is skipped with one
    warning.

    Args:
        log: the TensorBoard logger that takes each video's metrics at step = video index.
        log_gifs: also log each video's tracks.
        progress: records each video's outcome as it ends; the videos it holds from an earlier run are not
            run again.
    """
    results = EvalResults(skipped=list(getattr(dataset, "skipped", [])))
    num_videos = len(dataset) if num_videos is None else min(num_videos, len(dataset))
    done = {} if progress is None else {i: e for i, e in progress.done.items() if i < num_videos}
    if done:
        tqdm.write(f"going on after {len(done)} of {num_videos} videos done earlier ({progress.path})")
    running = RunningMeans(window=1000)
    for i in tqdm(range(num_videos), desc="videos", unit="video"):
        if i in done:
            if "row" in done[i]:
                results.videos.append(done[i]["row"])
                running.update(
                    {k: v for k, v in done[i]["row"].items() if k not in ROW_INFO and v is not None}
                )
            else:
                results.skipped.append(done[i]["skipped"])
            continue
        try:
            seq = dataset[i]
        except UnreadableSequence as err:
            logger.warning("skipped: %s", err)
            results.skipped.append(str(err))
            if progress is not None:
                progress.record(i, skipped=str(err))
            continue
        if not (seq.valids[0] > 0).any():
            logger.warning("video %s has no point valid at frame 0; skipped", seq.name)
            results.skipped.append(f"{seq.name}: no point valid at frame 0")
            if progress is not None:
                progress.record(i, skipped=results.skipped[-1])
            continue
        visuals = None
        if log is not None and log_gifs:

            def visuals(*args: Any, step: int = i) -> None:
                _log_visuals(log, *args, step=step)

        row, _ = evaluate_sequence(model, seq, protocol, visuals)
        if progress is not None:
            progress.record(i, row)
        metrics = {k: v for k, v in row.items() if k not in ROW_INFO and v is not None}
        running.update(metrics)
        tqdm.write(
            f"{seq.name}; step {i + 1:06d}/{num_videos}; "
            f"rtime {row['rtime']:.2f}; itime {row['itime']:.2f}; "
            f"d_x {running.mean('d_avg'):.1f}; sur_x {running.mean('survival'):.1f}; "
            f"med_x {running.mean('median_l2'):.1f}"
        )
        results.videos.append(row)
        if log is not None:
            log.scalars(i, metrics, prefix="metrics/")
    if not results.videos:
        raise ValueError(f"no sequence could be evaluated ({len(results.skipped)} skipped)")
    results.mean = mean_metrics(results.videos)
    return results


def mean_metrics(videos: list[dict[str, Any]]) -> Metrics:
    """Per metric (every key but name, num_frames, num_points, rtime, itime), the mean of its finite
    values over videos; None where no video has one (e.g. metrics the model cannot produce)."""
    keys = list(dict.fromkeys(k for v in videos for k in v if k not in ROW_INFO))
    out: Metrics = {}
    for k in keys:
        vals = [v[k] for v in videos if v.get(k) is not None and math.isfinite(v[k])]
        out[k] = float(np.mean(vals)) if vals else None
    return out


def results_table(results: EvalResults) -> str:
    """The mean metrics as a two-column table (metrics without a value show n/a), and how many videos the
    means cover and how many were skipped."""
    table = PrettyTable(["metric", "mean"])
    table.align["metric"] = "l"
    table.align["mean"] = "r"
    for k, v in results.mean.items():
        table.add_row([k, "n/a" if v is None else f"{v:.2f}"])
    table.add_row(["videos evaluated", len(results.videos)])
    table.add_row(["videos skipped", len(results.skipped)])
    return table.get_string()


def _finite_or_none(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite_or_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite_or_none(v) for v in x]
    return x


def write_results(path: str | Path, config: dict[str, Any], results: EvalResults) -> Path:
    """{config, mean, num_videos, skipped, videos} as JSON (non-finite numbers as null) -> the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "config": config,
        "mean": results.mean,
        "num_videos": len(results.videos),
        "skipped": results.skipped,
        "videos": results.videos,
    }
    path.write_text(json.dumps(_finite_or_none(payload), indent=2))
    return path


def evaluate_and_report(dataset: EvalDataset, protocol: EvalProtocol, config: EvalConfig) -> EvalResults:
    """What an evaluation script does with its config: build the model for inference, evaluate_dataset with
    TensorBoard logs in log_dir, then print the table of means and write log_dir/results.json (config, mean,
    skipped sequences, per-video rows)."""
    log_dir = Path(config.log_dir)
    progress = Progress(log_dir, dataclasses.asdict(config), config.resume)
    if config.onnx:
        model = OnnxWindow(config.onnx)
        model.check(config.image_size, config.iters)
    else:
        checkpoint = None if config.random_weights else config.init_ckpt
        if checkpoint is None:
            torch.manual_seed(0)  # one random model for every run, so a resumed run's videos fit the earlier
        model = build_model(checkpoint, config.device, fast=config.fast, log=tqdm.write)
        if isinstance(model, Pips) and next(model.parameters()).device.type == "cpu":
            tqdm.write(expected_time_line(model, config.image_size, config.iters, config.S))
    log = Logger(log_dir)
    try:
        results = evaluate_dataset(
            model,
            dataset,
            protocol,
            num_videos=config.max_videos,
            log=log,
            log_gifs=config.log_gifs,
            progress=progress,
        )
    except KeyboardInterrupt:
        kept = f"{len(progress.done)} video(s) done are kept in {progress.path}"
        tqdm.write(f"interrupted; {kept}; go on by running the same command with --resume")
        raise SystemExit(INTERRUPT_EXIT) from None
    finally:
        log.close()
    tqdm.write(results_table(results))
    for line in results.skipped:
        tqdm.write(f"skipped: {line}")
    tqdm.write(f"results: {write_results(log_dir / 'results.json', dataclasses.asdict(config), results)}")
    return results
