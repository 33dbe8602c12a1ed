"""The videos mode: PipsTracker (random weights, exact path) through generated videos of each length.

    python benchmark.py videos                       # 250, 1000 and 4000 frames
    python benchmark.py videos --lengths 250,1000

Two points are tracked through each mp4 video at 64x64 (also the model's resolution), queried at the last
frame (all backward) and at frame 0: wall time, time per video frame, peak memory (growth of peak RSS on
CPU, max allocated on CUDA) and frames decoded per video frame (1.0 when each frame is decoded once).
"""

import tempfile
import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import torch
from prettytable import PrettyTable
from tqdm import tqdm

from bench.config import BenchConfig
from bench.measure import environment, memory_kind, read_peak_gib, reset_peak
from bench.report import Report, cell, collect
from tracking.frames import VideoFileFrames
from tracking.predictor import PipsTracker, build_model
from utils.config import knob, require
from utils.dist import pick_device
from utils.video import write_video

VIDEO_SIZE = (64, 64)  # H,W of the generated videos, which is also the model's resolution
QUERY_AT = ("last", "first")


@dataclass(frozen=True)
class VideosConfig(BenchConfig):
    lengths: tuple[int, ...] = knob((250, 1000, 4000), "frames of each generated video")
    out: str = knob(
        "benchmark_videos.json", "JSON of the environment and the rows, rewritten as each row ends"
    )

    def __post_init__(self) -> None:
        ok = bool(self.lengths) and min(self.lengths) >= 2
        require(ok, "lengths", "frame counts of at least 2", self.lengths)


def long_video(path: Path, T: int, seed: int) -> None:
    """A T-frame mp4 of a random texture drifting one pixel per frame (to the right, wrapping around)."""
    texture = torch.randint(0, 256, (*VIDEO_SIZE, 3), generator=torch.Generator().manual_seed(seed))
    frames = texture.to(torch.uint8).numpy()  # H,W,3
    W = VIDEO_SIZE[1]
    write_video(path, (frames.take(range(-t, W - t), axis=1, mode="wrap") for t in range(T)), fps=25)


def measure_video(tracker: PipsTracker, path: Path, T: int, where: str) -> dict:
    """One tracker call with both queries at frame T-1 ('last') or 0 ('first')."""
    t = T - 1 if where == "last" else 0
    queries = [[t, 20.0, 20.0], [t, 40.0, 30.0]]
    baseline = reset_peak(tracker.device)
    began = time.perf_counter()
    source = VideoFileFrames(path, image_size=tracker.image_size, device=tracker.device)
    tracks = tracker.predict(source, queries=queries).tracks  # T,2,2
    seconds = time.perf_counter() - began
    peak = read_peak_gib(tracker.device, baseline)
    return {
        "frames": T,
        "queries_at": where,
        "tracked_frames": len(tracks),
        "seconds": seconds,
        "ms_per_frame": 1000 * seconds / T,
        "peak_mib": None if peak is None else peak * 1024,
        "decodes_per_frame": source.frames_read / T,
    }


def video_rows(lengths: tuple[int, ...], device: torch.device, seed: int) -> Generator[dict, None, None]:
    """Two rows per length (queries at the last frame, then at the first), each as it ends."""
    torch.manual_seed(seed)
    model = build_model(None, device, fast=False)
    tracker = PipsTracker(model, S=16, iters=1, image_size=VIDEO_SIZE)
    with tempfile.TemporaryDirectory() as tmp, tqdm(total=2 * len(lengths), desc="videos") as progress:
        warmup = Path(tmp) / "warmup.mp4"
        long_video(warmup, 20, seed)
        for where in QUERY_AT:  # a warm-up keeps the first calls' one-off allocations out of the rows
            measure_video(tracker, warmup, 20, where)
        for T in lengths:
            path = Path(tmp) / f"video_{T}.mp4"
            long_video(path, T, seed)
            for where in QUERY_AT:
                row = measure_video(tracker, path, T, where)
                progress.update()
                yield row
            path.unlink()


def videos_table(rows: list[dict]) -> PrettyTable:
    table = PrettyTable(["frames", "queries at", "seconds", "ms/frame", "peak MiB", "decodes/frame"])
    for r in rows:
        table.add_row(
            [
                r["frames"],
                r["queries_at"],
                f"{r['seconds']:.2f}",
                f"{r['ms_per_frame']:.2f}",
                cell(r["peak_mib"], ".1f"),
                f"{r['decodes_per_frame']:.3f}",
            ]
        )
    return table


def main(cfg: VideosConfig) -> None:
    device = pick_device(cfg.device)
    report = Report(cfg.out, environment(device) | {"mode": "videos", "memory": memory_kind(device)})
    rows = collect(video_rows(cfg.lengths, device, cfg.seed), report)
    print(videos_table(rows))
    print(f"wrote {cfg.out}")
