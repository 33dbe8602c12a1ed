"""Online tracking (tracking/online.py): speed and latency beside offline tracking, provisional estimates,
and flat memory and time per frame over a long stream.

    python -m bench.online                                   # 256 points at the defaults (S=64, 512x896)
    python -m bench.online --video camel.mp4 --S 16 --iters 4 --image_size 256,448 --provisional 16,4
    python -m bench.online --flat_frames 10000 --frames 0    # only the long stream at a tiny size

Weights are random (seeded), their updates damped as in the API golden test: they do not converge, so the
provisional-vs-final distances say how much a window's length moves such a model, not a trained one.
Latency is measured with frames pushed back to back: the time from a frame's push to the push (or flush)
that gives its final tracks; at a camera's rate it is (S-1) frames plus about a window's time.
"""

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from prettytable import PrettyTable

from nets.pips2 import Pips
from tracking.online import OnlineTracker
from tracking.predictor import PipsTracker, grid_queries
from utils.config import knob, require, run
from utils.video import read_frames

DAMPING = 0.1  # the delta block's output scale of the random model (as tests/test_api_golden.py)


def damped_tracker(
    S: int, iters: int, image_size: tuple[int, int], device: str, seed: int = 0
) -> PipsTracker:
    """A seeded random Pips whose updates are damped, so that its tracks stay finite over many windows."""
    torch.manual_seed(seed)
    model = Pips()
    with torch.no_grad():
        model.delta_block.dense.weight.mul_(DAMPING)
        model.delta_block.dense.bias.mul_(DAMPING)
    return PipsTracker(model.to(device), S=S, iters=iters, image_size=image_size)


def drifting_frame(texture: np.ndarray, t: int) -> np.ndarray:
    """Frame t of a texture drifting one pixel per frame to the right (wrapping around), H,W,3."""
    return np.roll(texture, t, axis=1)


def generated_video(T: int, H: int, W: int, seed: int = 0) -> np.ndarray:
    texture = np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)
    return np.stack([drifting_frame(texture, t) for t in range(T)])  # T,H,W,3


def _grid(video: np.ndarray, points: int, image_size: tuple[int, int]) -> np.ndarray:
    _, H, W, _ = video.shape
    return grid_queries(round(points**0.5), H, W, image_size).numpy()  # N,3 at frame 0


def offline_row(tracker: PipsTracker, video: np.ndarray, points: int) -> dict:
    """PipsTracker on the whole video: its first tracks come once every frame is in."""
    queries = _grid(video, points, tracker.image_size)
    began = time.perf_counter()
    tracker(video, queries=queries)
    seconds = time.perf_counter() - began
    T = len(video)
    return row("offline", T, len(queries), seconds, T - 1, seconds)


def row(mode: str, T: int, points: int, seconds: float, latency_frames: int, latency_s: float) -> dict:
    return {
        "mode": mode,
        "frames": T,
        "points": points,
        "fps": T / seconds,
        "latency_frames": latency_frames,
        "latency_ms": 1000 * latency_s,
        "ms_per_frame": 1000 * seconds / T,
    }


def stream(tracker: PipsTracker, video: np.ndarray, points: int, provisional: int = 0) -> dict:
    """Push the video frame by frame (grid points added at frame 0); times, final and provisional tracks."""
    online = OnlineTracker(tracker, provisional=provisional)
    T = len(video)
    pushed, given = np.zeros(T), np.zeros(T)  # when each frame was pushed, when its final tracks came
    push_seconds = np.zeros(T)
    finals, estimates = [], []
    began = time.perf_counter()
    for t, frame in enumerate(video):
        pushed[t] = time.perf_counter()
        step = online.push(frame)
        if t == 0:
            online.add_queries(_grid(video, points, tracker.image_size)[:, 1:])
        done = time.perf_counter()
        push_seconds[t] = done - pushed[t]
        given[step.final.frames] = done
        finals.append(step.final.tracks)
        if step.provisional is not None:
            estimates.append(step.provisional.tracks)
    last = online.flush().final
    given[last.frames] = time.perf_counter()
    seconds = time.perf_counter() - began
    finals.append(last.tracks)
    N = online.num_points
    padded = [np.pad(f, ((0, 0), (0, N - f.shape[1]), (0, 0)), constant_values=np.nan) for f in finals]
    return {
        "seconds": seconds,
        "latency_s": given - pushed,
        "push_seconds": push_seconds,
        "tracks": np.concatenate(padded),  # T,N,2
        "estimates": np.concatenate(estimates[1:]) if estimates else None,  # T-1,N,2 (frame 0 has no point)
    }


def online_rows(
    video: np.ndarray | None = None,
    frames: int = 127,
    points: int = 256,
    S: int = 64,
    iters: int = 16,
    image_size: tuple[int, int] = (512, 896),
    device: str = "cpu",
    provisional: tuple[int, ...] = (),
    tracker: PipsTracker | None = None,
) -> list[dict]:
    """Offline tracking, then online tracking of the same video (frames T,H,W,3; None = a generated one at
    the model's size), then online with each provisional window length: frames per second, latency in
    frames and ms, and for provisional estimates their distance from the final tracks (video pixels, over
    every frame after 0 and every point). `tracker` replaces the damped random one (S, iters, image_size
    and device are then its own)."""
    tracker = tracker or damped_tracker(S, iters, image_size, device)
    S, image_size = tracker.S, tracker.image_size
    video = generated_video(frames, *image_size) if video is None else video[:frames]
    tracker(video[:2], queries=_grid(video, points, image_size))  # the first call's one-time set-up
    rows = [offline_row(tracker, video, points)]
    T = len(video)
    base = stream(tracker, video, points)
    N = round(points**0.5) ** 2
    rows.append(row("online", T, N, base["seconds"], S - 1, float(np.mean(base["latency_s"]))))
    for K in provisional:
        run_k = stream(tracker, video, points, provisional=K)
        gap = np.linalg.norm(run_k["estimates"] - run_k["tracks"][1:], axis=-1)  # T-1,N
        rows.append(
            row(f"online+provisional {K}", T, N, run_k["seconds"], 0, float(np.mean(run_k["push_seconds"])))
        )
        rows[-1] |= {
            "extra_ms_per_frame": 1000 * (run_k["seconds"] - base["seconds"]) / T,
            "provisional_px_mean": float(np.mean(gap)),
            "provisional_px_median": float(np.median(gap)),
            "provisional_px_p95": float(np.percentile(gap, 95)),
            "provisional_px_max": float(np.max(gap)),
            "final_vs_no_provisional_px": float(np.nanmax(np.abs(run_k["tracks"] - base["tracks"]))),
        }
    return rows


def resident_mib() -> float | None:
    """This process's resident memory now (Linux /proc), None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def flatness_rows(
    frames: int = 10_000,
    block: int = 1000,
    size: tuple[int, int] = (64, 64),
    S: int = 8,
    iters: int = 1,
    points: int = 16,
    device: str = "cpu",
    tracker: PipsTracker | None = None,
) -> list[dict]:
    """Push `frames` generated frames of `size` (also the model's size) into one OnlineTracker; one row per
    block of frames: resident memory at its end, wall and CPU time per frame, and the most frames held.
    `tracker` replaces the damped random one (its image size must be `size`)."""
    tracker = tracker or damped_tracker(S, iters, size, device)
    online = OnlineTracker(tracker)
    texture = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    grid = grid_queries(round(points**0.5), *size, size).numpy()
    rows, held = [], 0
    wall, cpu = time.perf_counter(), time.process_time()
    for t in range(frames):
        online.push(drifting_frame(texture, t))
        if t == 0:
            online.add_queries(grid[:, 1:])
        held = max(held, online.frames_held)
        if (t + 1) % block == 0:
            now_wall, now_cpu = time.perf_counter(), time.process_time()
            rows.append(
                {
                    "frames": t + 1,
                    "rss_mib": resident_mib(),
                    "ms_per_frame": 1000 * (now_wall - wall) / block,
                    "cpu_ms_per_frame": 1000 * (now_cpu - cpu) / block,
                    "frames_held_max": held,
                }
            )
            wall, cpu, held = now_wall, now_cpu, 0
    online.flush()
    return rows


SPEED_COLUMNS = [
    "mode",
    "frames",
    "points",
    "fps",
    "latency_frames",
    "latency_ms",
    "ms_per_frame",
    "extra_ms_per_frame",
    "provisional_px_mean",
    "provisional_px_p95",
    "provisional_px_max",
]


def write_table(rows: list[dict], columns: list[str]) -> None:
    table = PrettyTable(columns)
    for r in rows:
        table.add_row([f"{v:.4g}" if isinstance(v, float) else v for v in (r.get(c, "") for c in columns)])
    sys.stdout.write(f"{table}\n")


def change(rows: list[dict], key: str) -> float:
    """How much the last block's value differs from the first's, in percent of the first."""
    return 100 * (rows[-1][key] - rows[0][key]) / rows[0][key]


@dataclass(frozen=True)
class OnlineBenchConfig:
    video: str = knob("", "video file for the speed rows (e.g. camel.mp4); '' = a generated one")
    frames: int = knob(
        127, "frames tracked for the speed rows (127 = two windows at S=64); 0 = no speed rows"
    )
    points: int = knob(256, "points on a grid at frame 0: round(sqrt(points))^2")
    S: int = knob(64, "frames per window")
    iters: int = knob(16, "refinement iterations per window")
    image_size: tuple[int, int] = knob((512, 896), "H,W the frames are resized to for the model")
    device: str = knob("cpu", "where the model runs")
    provisional: tuple[str, ...] = knob((), "provisional window lengths to measure, e.g. 16,4")
    flat_frames: int = knob(0, "frames of the long-stream rows at a tiny size (e.g. 10000); 0 = none")
    threads: int = knob(0, "torch threads; 0 = torch's default")
    out: str = knob("online_bench.json", "where the rows are written as JSON")

    def __post_init__(self) -> None:
        require(self.frames >= 0 and self.flat_frames >= 0, "frames", "0 or more", self.frames)
        require(all(p.isdigit() for p in self.provisional), "provisional", "window lengths", self.provisional)


def main(cfg: OnlineBenchConfig) -> None:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    result: dict = {"config": asdict(cfg), "resident_mib_at_start": resident_mib()}
    if cfg.frames:
        video = read_frames(cfg.video, max_frames=cfg.frames) if cfg.video else None
        lengths = tuple(int(p) for p in cfg.provisional)
        rows = online_rows(
            video, cfg.frames, cfg.points, cfg.S, cfg.iters, cfg.image_size, cfg.device, lengths
        )
        write_table(rows, SPEED_COLUMNS)
        result["speed"] = rows
    if cfg.flat_frames:
        rows = flatness_rows(cfg.flat_frames, block=max(cfg.flat_frames // 10, 1), device=cfg.device)
        write_table(rows, list(rows[0]))
        for key in ("rss_mib", "ms_per_frame", "cpu_ms_per_frame"):
            if rows[0][key]:
                sys.stdout.write(f"{key}: the last block {change(rows, key):+.1f}% against the first\n")
        result["flatness"] = rows
    Path(cfg.out).write_text(json.dumps(result, indent=2))
    sys.stdout.write(f"wrote {cfg.out}\n")


if __name__ == "__main__":
    run(main, OnlineBenchConfig)
