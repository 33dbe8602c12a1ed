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
import math
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm import tqdm

from tracking.frames import MIN_SIDE, check_size
from tracking.onnx_backend import EXPORT_PACKAGES, can_export_and_run, read_spec
from tracking.onnx_export import cached_export
from tracking.predictor import PipsTracker, PredictionInterrupted, build_model, check_queries, grid_queries
from tracking.settings import CPU_SETTING, FULL_SETTING, cpu_setting_line, setting_for
from tracking.stream import record_stream
from utils.checkpoint import REFERENCE_DIR
from utils.config import INTERRUPT_EXIT, Flags, UsageError, default_resolve, knob, require, run
from utils.dist import pick_device
from utils.logger import Logger
from utils.video import VideoInfo, VideoWriter, read_video, video_info
from utils.vis import colors_by_position, draw_tracks


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


def _chunks(frames: Iterator[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """Consecutive stacks of up to `size` frames, T,H,W,3."""
    chunk = []
    for frame in frames:
        chunk.append(frame)
        if len(chunk) == size:
            yield np.stack(chunk)
            chunk = []
    if chunk:
        yield np.stack(chunk)


def _even(frames: np.ndarray) -> np.ndarray:
    """Pad T,H,W,3 frames by one edge row/column where H or W is odd (H.264 needs even sizes)."""
    _, H, W, _ = frames.shape
    return np.pad(frames, ((0, 0), (0, H % 2), (0, W % 2), (0, 0)), mode="edge")


def drawn_frames(
    filename: str,
    tracks: np.ndarray,
    visible: np.ndarray | None,
    colors: np.ndarray,
    trail: int,
    radius: int,
    chunk: int,
) -> Iterator[np.ndarray]:
    """The video's first T frames with the tracks T,N,2 drawn (hollow where `visible` T,N is False),
    streamed in chunks of frames T',H,W,3. Each chunk is drawn after the last `trail` frames of the previous
    one so the trails run on."""
    history = None  # the last frames of the previous chunk
    start = 0
    for frames in _chunks(read_video(filename, max_frames=len(tracks)), chunk):
        ctx = 0 if history is None else len(history)
        both = frames if history is None else np.concatenate([history, frames])  # ctx+T',H,W,3
        end = start + len(frames)
        vis = None if visible is None else visible[start - ctx : end]
        drawn = draw_tracks(both, tracks[start - ctx : end], vis, colors=colors, trail=trail, radius=radius)
        yield drawn[ctx:]
        history = both[max(len(both) - trail, 0) :] if trail > 0 else None
        start = end


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
        try:
            check_size(self.image_size or (MIN_SIDE, MIN_SIDE), least=MIN_SIDE)
        except ValueError as err:
            raise UsageError(f"--{err}") from None


def write_drawn(
    cfg: DemoConfig,
    video_path: Path,
    tracks: np.ndarray,
    visibility: np.ndarray | None,
    query_rows: torch.Tensor,
    info: VideoInfo,
    video_fps: float,
) -> int:
    """Writes the video's first len(tracks) frames with the tracks drawn to `video_path` (and TensorBoard
    gifs with --log_dir); the count of frames written. The mp4 is closed and plays even when interrupted."""
    colors = colors_by_position(query_rows[:, 1:].numpy(), info.height, info.width)  # N,3
    radius = max(2, round(min(info.height, info.width) / 180))
    log = Logger(cfg.log_dir, enabled=bool(cfg.log_dir))
    try:
        with VideoWriter(video_path, fps=cfg.fps or video_fps) as writer:
            visible = None if visibility is None else visibility > 0.5
            drawn = drawn_frames(cfg.filename, tracks, visible, colors, cfg.trail, radius, chunk=cfg.S)
            with tqdm(total=len(tracks), desc="drawing", unit="frame") as bar:
                for step, frames in enumerate(drawn):
                    for frame in _even(frames):
                        writer.write(frame)
                    log.gif("outputs/tracks", frames, step, fps=round(cfg.fps or video_fps))
                    bar.update(len(frames))
    finally:
        log.close()
    return writer.num_frames


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


def use_onnxruntime(runtime: str, device: torch.device) -> bool:
    """Whether the network runs in onnxruntime: as asked, and with auto on a CPU where it is installed
    (one line says how to get it where it is not)."""
    ready = can_export_and_run()
    install = f"pip install {' '.join(EXPORT_PACKAGES)}"
    if runtime == "onnxruntime" and not ready:
        raise OSError(f"--runtime onnxruntime needs {', '.join(EXPORT_PACKAGES)}: {install}")
    if runtime == "auto" and device.type == "cpu" and not ready:
        print(f"runtime: PyTorch; {install} for onnxruntime, faster on a CPU")
    return runtime == "onnxruntime" or (runtime == "auto" and device.type == "cpu" and ready)


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
        if use_onnxruntime(cfg.runtime, next(model.parameters()).device):
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
    head = (
        {}
        if result.visibility is None
        else {"visibility": result.visibility, "confidence": result.confidence}
    )
    np.savez(
        npz_path,
        tracks=tracks,
        queries=query_rows.numpy(),
        fps=np.float32(video_fps),
        num_frames=np.int64(T),
        **head,
    )
    video_path = out / f"{name}_tracks.mp4"
    if interrupted:
        print(f"interrupted: wrote the tracks of the first {T} frames to {npz_path}; drawing them")
    try:
        drawn = write_drawn(cfg, video_path, tracks, result.visibility, query_rows, info, video_fps)
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
