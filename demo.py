"""Track points through a video with PIPs++ and draw them.

python demo.py --filename video.mp4                     # a 32x32 grid at frame 0, reference model
python demo.py --filename video.mp4 --queries q.txt     # your own points: rows of t,x,y in video pixels
python demo.py --filename frames/ --random_weights      # smoke run without the checkpoint
python demo.py --online --filename 0                    # camera 0 (or a stream URL, or a file) as it arrives
python demo.py --filename video.mp4 --onnx pips2.onnx   # the network in onnxruntime (export_onnx.py)
python demo.py --filename video.mp4 --runtime torch     # the network in PyTorch on a CPU too

(*) Settings not given: the full setting (512,896, N=1024, 16 iterations, S=64) on a GPU; the CPU setting
(tracking/settings.py) without one, said in one line; with --onnx the export's. On a CPU the network runs in
onnxruntime where onnx, onnxscript and onnxruntime are installed (several times faster than PyTorch there,
the same tracks to 1e-3 px), exported once per weights and setting into ~/.cache/pips2 ($PIPS_CACHE).

Writes <out_dir>/<name>_tracks.mp4 (each track a dot with a fading trail, coloured by where it starts,
at the video's resolution; hollow while the visibility head says it is hidden) and <name>_tracks.npz (tracks
T,N,2 in video pixels, queries N,3, fps; with a visibility head also visibility and confidence T,N, the
probabilities that a point is visible and that its track is within a few pixels).
Long videos stream through window by window; only the tracks are held for the whole video.
With --online, frames are tracked as they arrive (tracking/stream.py): the mp4 is written as it goes, tracks
are final S-1 frames behind, query rows are added when their frame arrives and tracked forward from it
(NaN before), and Ctrl-C ends the stream keeping what was written.
"""

import dataclasses
import io
import itertools
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm import tqdm

from tracking.frames import MIN_SIDE, require_size
from tracking.onnx_backend import read_spec, use_onnxruntime
from tracking.onnx_export import cached_export
from tracking.outputs import save_npz, write_tracks_video
from tracking.predictor import (
    PipsTracker,
    Prediction,
    PredictionInterrupted,
    build_model,
    check_queries,
    grid_queries,
)
from tracking.settings import CPU_SETTING, FULL_SETTING, cpu_setting_line, setting_for
from tracking.stream import record_stream
from utils.checkpoint import REFERENCE_DIR
from utils.config import INTERRUPT_EXIT, Flags, default_resolve, knob, require, run
from utils.dist import pick_device
from utils.logger import Logger
from utils.video import VideoInfo, video_info


def load_queries(path: str | Path) -> np.ndarray:
    """N,3 float32 rows of t,x,y from a .npy file or a .txt file (whitespace or commas, # comments)."""
    p = Path(path)
    if p.suffix.lower() not in (".txt", ".npy"):
        raise ValueError(f"query file {p} must be a .txt or .npy file")
    if not p.is_file():
        raise FileNotFoundError(f"no such query file: {p}")
    try:
        if p.suffix.lower() == ".npy":
            rows = np.load(p, allow_pickle=False).astype(np.float32)
        else:
            with warnings.catch_warnings():  # an empty file is reported below, not warned about
                warnings.simplefilter("ignore")
                text = p.read_text().replace(",", " ")
                rows = np.loadtxt(io.StringIO(text), dtype=np.float32, ndmin=2)
    except (ValueError, OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read query file {p}: {' '.join(str(err).split())}") from None
    if rows.size == 0:
        raise ValueError(f"query file {p} holds no queries: give one row t x y per point")
    if rows.ndim != 2 or rows.shape[1] != 3:
        raise ValueError(f"query file {p} must hold rows of t,x,y; got an array of shape {rows.shape}")
    return rows


@dataclass(frozen=True)
class DemoConfig:
    filename: str = knob("", "video file (mp4/mov/avi/gif/...) or folder of jpg/png frames")
    N: int | None = knob(None, "points on a square grid at frame 0: round(sqrt(N))^2, so 1024 = 32x32 (*)")
    queries: str = knob("", ".txt or .npy file of t,x,y rows in the video's pixels; replaces the grid")
    S: int | None = knob(None, "frames per window (*)")
    iters: int | None = knob(None, "refinement iterations per window (*)")
    image_size: tuple[int, int] | None = knob(None, "H,W the frames are resized to for the model (*)")
    onnx: str = knob("", "run the network in onnxruntime from this export_onnx.py file")
    runtime: Literal["auto", "torch", "onnxruntime"] = knob(
        "auto", "where the network runs: auto = onnxruntime on a CPU where installed, else PyTorch"
    )
    max_frames: int = knob(0, "track only the first max_frames frames; 0 = all")
    init_ckpt: str = knob(REFERENCE_DIR, "checkpoint file, or folder of model-*.pth", aliases=("init_dir",))
    random_weights: bool = knob(False, "untrained model, no checkpoint needed (smoke runs)")
    out_dir: str = knob("./demo_out", "where the mp4 and npz are written")
    device: str = knob("", "cpu, cuda, cuda:1, ...; '' = the best available")
    fast: bool = knob(True, "the fast path (float16, fused kernels) on CUDA; CPU always runs exact float32")
    log_dir: str = knob("", "also write the drawn video as TensorBoard gifs (one per window) here")
    fps: float = knob(0.0, "frame rate of the output video; 0 = the input's (24 for a folder of frames)")
    trail: int = knob(8, "frames of fading trail behind each point")
    online: bool = knob(False, "track as frames arrive: --filename is a camera index, a stream URL or a file")

    def __post_init__(self) -> None:
        require(self.N is None or self.N >= 1, "N", "at least 1", self.N)
        require(self.S is None or self.S >= 2, "S", "at least 2", self.S)
        require(self.iters is None or self.iters >= 1, "iters", "at least 1", self.iters)
        require(self.max_frames >= 0, "max_frames", "0 or more", self.max_frames)
        require(self.fps >= 0, "fps", "0 or more", self.fps)
        require(self.trail >= 0, "trail", "0 or more", self.trail)
        require_size(self.image_size, least=MIN_SIDE)


def write_drawn(
    cfg: DemoConfig,
    video_path: Path,
    result: Prediction,
    query_rows: torch.Tensor,
    info: VideoInfo,
    fps: float,
) -> int:
    """Writes the video's first len(result.tracks) frames with the tracks drawn to `video_path` (and
    TensorBoard gifs with --log_dir); the count of frames written. The mp4 is closed and plays even when
    interrupted."""
    log = Logger(cfg.log_dir, enabled=bool(cfg.log_dir))
    steps = itertools.count()
    try:
        with tqdm(total=len(result.tracks), desc="drawing", unit="frame") as bar:

            def on_chunk(frames: np.ndarray) -> None:
                log.gif("outputs/tracks", frames, next(steps), fps=round(fps))
                bar.update(len(frames))

            size = (info.height, info.width)
            return write_tracks_video(
                video_path, cfg.filename, result, query_rows.numpy(), size, fps, cfg.trail, cfg.S, on_chunk
            )
    finally:
        log.close()


SETTINGS = ("image_size", "N", "iters", "S")


def resolve_config(cls: type[DemoConfig], flags: Flags) -> tuple[DemoConfig, list[str]]:
    """Defaults < --config files < flags, then the settings still unset: with --onnx the export's (N the
    CPU setting's), else the full setting on a GPU and the CPU setting elsewhere, said in one line."""
    asked, _ = default_resolve(cls, flags)
    unset = [name for name in SETTINGS if getattr(asked, name) is None]
    given = [f"--{name}" for name in SETTINGS if name not in unset]
    if not unset:
        return asked, []
    if asked.onnx:
        spec = read_spec(asked.onnx)
        export = {"image_size": (spec.height, spec.width), "iters": spec.iters, "S": spec.S}
        values = {name: export.get(name, getattr(CPU_SETTING, name)) for name in unset}
        settings = ", ".join(f"{name}={values[name]}" for name in unset)
        return dataclasses.replace(asked, **values), [f"{asked.onnx}: {settings} (the export's; N the CPU's)"]
    device = pick_device(asked.device)
    setting = setting_for(device)
    config = dataclasses.replace(asked, **{name: getattr(setting, name) for name in unset})
    return config, [cpu_setting_line(FULL_SETTING.flags(), given)] if device.type == "cpu" else []


def main(cfg: DemoConfig) -> None:
    if not cfg.filename:
        raise ValueError("no video given: pass --filename <video file or folder of frames>")
    if cfg.online:
        return run_online(cfg)
    info = video_info(cfg.filename)  # the container's frame count: no decoding
    T = min(cfg.max_frames, info.num_frames) if cfg.max_frames else info.num_frames
    if cfg.queries:
        rows = load_queries(cfg.queries)
        try:
            query_rows = check_queries(rows, T, info.height, info.width)  # N,3
        except ValueError as err:
            raise ValueError(f"query file {cfg.queries}: {err}") from None
    else:
        query_rows = grid_queries(round(math.sqrt(cfg.N)), info.height, info.width, cfg.image_size)  # N,3
    settings = {"S": cfg.S, "iters": cfg.iters, "image_size": cfg.image_size}
    onnx = cfg.onnx
    if not onnx:
        if cfg.random_weights:
            torch.manual_seed(0)
        checkpoint = None if cfg.random_weights else cfg.init_ckpt
        model = build_model(checkpoint, cfg.device, fast=cfg.fast, log=print)
        if use_onnxruntime(cfg.runtime, next(model.parameters()).device, print):
            onnx = cached_export(model, cfg.S, cfg.image_size, cfg.iters, print)
    if onnx:
        tracker = PipsTracker.from_onnx(onnx, **settings)
        print(f"model: {onnx} in onnxruntime ({', '.join(tracker.model.session.get_providers())})")
    else:
        tracker = PipsTracker(model, **settings)
    # each distinct query frame is a forward and a backward pass that together track T-1 frames
    total = (T - 1) * len(query_rows[:, 0].unique())
    began = time.perf_counter()
    interrupted = False
    try:
        with tqdm(total=total, desc="tracking", unit="frame") as bar:
            result = tracker.predict(cfg.filename, queries=query_rows, max_frames=T, progress=bar.update)
    except PredictionInterrupted as stop:
        result, interrupted = stop.partial, True
        if len(result.tracks) == 0:
            print("interrupted before any frame was tracked: nothing written")
            raise SystemExit(INTERRUPT_EXIT) from None
    tracks = result.tracks  # T',N,2
    seconds = time.perf_counter() - began
    if len(tracks) < T and not interrupted:
        print(f"the video holds {len(tracks)} readable frames of the {T} its container announces")
    T = len(tracks)

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = Path(cfg.filename).resolve().stem
    video_fps = info.fps or cfg.fps or 24.0
    npz_path = out / f"{name}_tracks.npz"
    save_npz(npz_path, result, query_rows.numpy(), video_fps)
    video_path = out / f"{name}_tracks.mp4"
    if interrupted:
        print(f"interrupted: wrote the tracks of the first {T} frames to {npz_path}; drawing them")
    try:
        drawn = write_drawn(cfg, video_path, result, query_rows, info, cfg.fps or video_fps)
    except KeyboardInterrupt:
        print(f"interrupted while drawing: {video_path} is closed and plays; {npz_path} holds every track")
        raise SystemExit(INTERRUPT_EXIT) from None
    if interrupted:
        print(f"wrote {video_path} ({drawn} frames) and {npz_path}")
        raise SystemExit(INTERRUPT_EXIT)
    speed = f"{T / seconds:.2f} frames/s"
    print(f"tracked {len(query_rows)} points through {T} frames in {seconds:.1f} s ({speed})")
    gifs = f"; TensorBoard gifs in {cfg.log_dir}" if cfg.log_dir else ""
    print(f"wrote {video_path} and {npz_path}{gifs}")


def run_online(cfg: DemoConfig) -> None:
    """--online: the stream tracked as it arrives, written to <out_dir>/<name>_tracks.mp4 and .npz."""
    if cfg.random_weights:
        torch.manual_seed(0)
    model = build_model(None if cfg.random_weights else cfg.init_ckpt, cfg.device, fast=cfg.fast, log=print)
    tracker = PipsTracker(model, S=cfg.S, iters=cfg.iters, image_size=cfg.image_size)
    queries = load_queries(cfg.queries) if cfg.queries else None
    grid_size = None if cfg.queries else round(math.sqrt(cfg.N))
    record_stream(
        cfg.filename, tracker, cfg.out_dir, queries, grid_size, cfg.fps, cfg.trail, cfg.max_frames or None
    )


if __name__ == "__main__":
    run(main, DemoConfig, resolve_config)
