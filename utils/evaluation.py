"""What test_on_pod.py, test_on_tap.py and test_on_cro.py share: model loading, frame sources that
read a video one window at a time at the evaluated resolution, the per-video loop (frame-0 queries,
PIPs++ metrics, the official progress line), and the results table and JSON file."""

import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from prettytable import PrettyTable
from tqdm import tqdm

from nets.pips2 import Pips
from nets.tracker import FrameSource, track_from_first_frame
from utils.checkpoint import load_weights
from utils.dist import fast_dtype, pick_device
from utils.logger import Logger, RunningMeans
from utils.metrics import compute_pips_metrics
from utils.video import read_image
from utils.vis import draw_text, draw_tracks, draw_trajs_on_image

logger = logging.getLogger(__name__)

SIZE_MULTIPLE = 32  # the official scripts assert image sides divisible by 32
# the keys of a result row that are not metrics
ROW_INFO = ("name", "num_frames", "num_points", "rtime", "itime")
MAX_GIF_FRAMES = 64  # frames sampled over a video for its TensorBoard gif

Metrics = dict[str, float | None]


def check_image_size(image_size: Sequence[int] | str) -> tuple[int, int]:
    """(H, W) from a pair of ints or a string "H,W"; each side a positive multiple of 32."""
    parts = image_size.split(",") if isinstance(image_size, str) else list(image_size)
    try:
        H, W = (int(p) for p in parts)
    except (TypeError, ValueError):
        raise ValueError(f"image_size must be two integers H,W, got {image_size!r}") from None
    if H <= 0 or W <= 0 or H % SIZE_MULTIPLE or W % SIZE_MULTIPLE:
        raise ValueError(f"image_size sides must be positive multiples of {SIZE_MULTIPLE}, got {H}x{W}")
    return H, W


def load_model(
    init_dir: str | Path, device: str = "", random_weights: bool = False, fast: bool = True
) -> tuple[Pips, torch.device]:
    """Pips in eval mode with the checkpoint of `init_dir` (a file, or a directory's latest) on `device`
    ('' = best available), on the fast path (float16) when `fast` and on CUDA; says which.

    random_weights skips loading. Raises FileNotFoundError pointing at get_reference_model.sh when there is
    no checkpoint.
    """
    dev = pick_device(device)
    model = Pips(stride=8)
    step = 0 if random_weights else load_weights(init_dir, model)
    dtype = fast_dtype(dev, fast)
    where = f"{dev}{', fast path (float16)' if dtype is not None else ''}"
    tqdm.write(f"model: {'random weights' if random_weights else f'{init_dir} (step {step})'} on {where}")
    return model.to(dev).eval().set_fast(dtype is not None, dtype), dev


def scale_tracks(trajs: np.ndarray, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> np.ndarray:
    """Pixel tracks ...,2 (x,y) of an image of size from_hw, in an image resized to to_hw (x*W'/W, y*H'/H)."""
    sx = to_hw[1] / from_hw[1]
    sy = to_hw[0] / from_hw[0]
    return (np.asarray(trajs, np.float32) * np.array([sx, sy], np.float32)).astype(np.float32)


class ImageFiles:
    """A FrameSource over image files, one per frame, read when their window is requested and
    resized with cv2 INTER_LINEAR to size (H, W) (the official PointOdyssey and CroHD protocol)."""

    def __init__(
        self, paths: Sequence[str | Path], size: tuple[int, int], device: torch.device | str
    ) -> None:
        if not paths:
            raise ValueError("ImageFiles needs at least one frame path")
        self.paths = list(paths)
        self.size = size
        self.device = device
        self.num_frames = len(self.paths)

    def get(self, start: int, end: int) -> torch.Tensor:
        H, W = self.size
        frames = np.stack(
            [cv2.resize(read_image(p), (W, H), interpolation=cv2.INTER_LINEAR) for p in self.paths[start:end]]
        )  # T,H,W,3
        video = torch.from_numpy(frames).permute(0, 3, 1, 2)[None]  # 1,T,3,H,W
        return video.to(self.device).float()


class TimedFrames:
    """Passes frames through and adds the seconds spent reading them to `seconds`."""

    def __init__(self, base: FrameSource) -> None:
        self.base = base
        self.num_frames = base.num_frames
        self.seconds = 0.0

    def get(self, start: int, end: int) -> torch.Tensor:
        t0 = time.perf_counter()
        frames = self.base.get(start, end)
        self.seconds += time.perf_counter() - t0
        return frames


@dataclass
class EvalVideo:
    """One evaluation video at the evaluated resolution; queries are the ground truth at frame 0."""

    name: str
    frames: FrameSource  # one video (B=1) at the evaluated resolution
    image_hw: tuple[int, int]  # H,W of the evaluated resolution
    trajs_g: np.ndarray  # T,N,2 float32 x,y pixels of the evaluated resolution
    valids: np.ndarray  # T,N float32, where the metrics count
    # more metrics of this video from the model (e.g. the TAP-Vid benchmark's); None = not applicable
    extra: Callable[[Pips], Metrics] | None = None


@dataclass
class EvalResults:
    videos: list[dict[str, Any]] = field(default_factory=list)  # name, num_frames, num_points, times, metrics
    mean: Metrics = field(default_factory=dict)  # per metric, the mean over videos of its finite values


def _to_uint8_frames(frames: torch.Tensor) -> np.ndarray:
    """1,T,3,H,W float 0..255 -> T,H,W,3 uint8."""
    return frames[0].permute(0, 2, 3, 1).round().clamp(0, 255).to(torch.uint8).cpu().numpy()


def _log_visuals(log: Logger, video: EvalVideo, trajs_e: np.ndarray, d_avg: float, step: int) -> None:
    """Tracks on frame 0 (ground truth and estimate) and a gif of the estimate over sampled frames."""
    T = video.frames.num_frames
    rgb0 = _to_uint8_frames(video.frames.get(0, 1))[0]  # H,W,3
    log.image("0_inputs/trajs_g_on_rgb0", draw_trajs_on_image(rgb0, video.trajs_g, video.valids), step)
    on_rgb0 = draw_trajs_on_image(rgb0, trajs_e, video.valids)
    log.image("2_outputs/trajs_e_on_rgb0", draw_text(on_rgb0, f"d_avg {d_avg:.1f}"), step)
    times = np.unique(np.linspace(0, T - 1, min(T, MAX_GIF_FRAMES)).round().astype(int))
    frames = np.concatenate([_to_uint8_frames(video.frames.get(t, t + 1)) for t in times])  # T',H,W,3
    log.gif("2_outputs/trajs_e_on_rgbs", draw_tracks(frames, trajs_e[times]), step)


def _track_video(
    model: Pips, video: EvalVideo, S: int, iters: int, bar: tqdm
) -> tuple[torch.Tensor, float, float]:
    """Frame-0 tracking of one video -> (trajs_e 1,T,N,2, read seconds, inference seconds)."""
    device = next(model.parameters()).device
    frames = TimedFrames(video.frames)
    xy = torch.from_numpy(np.ascontiguousarray(video.trajs_g[0]))[None].to(device)  # 1,N,2
    t0 = time.perf_counter()
    trajs_e = track_from_first_frame(model, frames, xy, S=S, iters=iters, progress=bar.update)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    total = time.perf_counter() - t0
    return trajs_e, frames.seconds, total - frames.seconds


def evaluate_video(model: Pips, video: EvalVideo, S: int, iters: int) -> tuple[dict[str, Any], np.ndarray]:
    """Track one video from its frame-0 ground truth and score it -> (result row, trajs_e T,N,2).

    The row holds name, num_frames, num_points, rtime (seconds reading frames), itime (seconds in the
    model), the PIPs++ metrics at the evaluated resolution, then the video's `extra` metrics.
    """
    T, N = video.valids.shape
    with tqdm(total=T, desc=video.name, unit="frame", leave=False) as bar:
        bar.update(1)  # frame 0 holds the queries
        trajs_e, rtime, itime = _track_video(model, video, S, iters, bar)
    trajs_g = torch.from_numpy(video.trajs_g)[None]  # 1,T,N,2
    valids = torch.from_numpy(np.asarray(video.valids, np.float32))[None]  # 1,T,N
    row: dict[str, Any] = {
        "name": video.name,
        "num_frames": T,
        "num_points": N,
        "rtime": rtime,
        "itime": itime,
    }
    row.update(compute_pips_metrics(trajs_e, trajs_g, valids, *video.image_hw))
    if video.extra is not None:
        row.update(video.extra(model))
    return row, trajs_e[0].cpu().numpy()


def evaluate_videos(
    model: Pips,
    videos: Iterable[EvalVideo],
    *,
    num_videos: int,
    S: int = 128,
    iters: int = 16,
    log: Logger | None = None,
    log_gifs: bool = False,
) -> EvalResults:
    """Evaluate videos one by one (see evaluate_video): the frame-0 protocol with windows of S frames
    chained as official.

    Prints the official line per video (running means over videos) above a tqdm bar, and logs each
    video's metrics to TensorBoard at step = video index (and its tracks when log_gifs).
    """
    results = EvalResults()
    running = RunningMeans(window=1000)
    for i, video in enumerate(tqdm(videos, total=num_videos, desc="videos", unit="video")):
        if video.valids.shape[1] == 0:
            logger.warning("video %s has no point to track; skipped", video.name)
            continue
        row, trajs_e = evaluate_video(model, video, S, iters)
        metrics = {k: v for k, v in row.items() if k not in ROW_INFO and v is not None}
        running.update(metrics)
        tqdm.write(
            f"{video.name}; step {i + 1:06d}/{num_videos}; "
            f"rtime {row['rtime']:.2f}; itime {row['itime']:.2f}; "
            f"d_x {running.mean('d_avg'):.1f}; sur_x {running.mean('survival'):.1f}; "
            f"med_x {running.mean('median_l2'):.1f}"
        )
        results.videos.append(row)
        if log is not None:
            log.scalars(i, metrics, prefix="metrics/")
            if log_gifs:
                _log_visuals(log, video, trajs_e, row["d_avg"], i)
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


def results_table(mean: Metrics) -> str:
    """The mean metrics as a two-column table; metrics without a value show n/a."""
    table = PrettyTable(["metric", "mean"])
    table.align["metric"] = "l"
    table.align["mean"] = "r"
    for k, v in mean.items():
        table.add_row([k, "n/a" if v is None else f"{v:.2f}"])
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
    """{config, mean, videos} as JSON (non-finite numbers as null) -> the path written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"config": config, "mean": results.mean, "videos": results.videos}
    path.write_text(json.dumps(_finite_or_none(payload), indent=2))
    return path


def evaluate_and_report(
    model: Pips,
    videos: Iterable[EvalVideo],
    num_videos: int,
    *,
    S: int,
    iters: int,
    log_dir: str | Path,
    log_gifs: bool,
    config: dict[str, Any],
) -> EvalResults:
    """evaluate_videos with TensorBoard logs in log_dir, then the table of means on stdout and
    log_dir/results.json (config, mean, per-video rows)."""
    log = Logger(log_dir)
    try:
        results = evaluate_videos(
            model, videos, num_videos=num_videos, S=S, iters=iters, log=log, log_gifs=log_gifs
        )
    finally:
        log.close()
    tqdm.write(results_table(results.mean))
    tqdm.write(f"results: {write_results(Path(log_dir) / 'results.json', config, results)}")
    return results
