"""Time, peak memory and FLOPs of the exact float32 path and the fast path of Pips, side by side.

    python benchmark.py                                 # the official H100 configs on CUDA, small ones on CPU
    python benchmark.py --configs eval-window --compile # one of them, fast path compiled
    python benchmark.py --S 24 --N 512 --H 384 --W 512  # one custom shape
    python benchmark.py --preset train-memory           # training steps, recomputation off and on
    python benchmark.py --agree_ckpt ./checkpoints/<run> # fast vs exact tracks, trained weights
    python benchmark.py --videos 250,1000,4000          # PipsTracker through generated videos

Each row is timed after warm-up (CUDA events on CUDA), median and min over the repeats. FLOPs are counted
with torch's FlopCounterMode on one step of the exact path (the fused kernel is invisible to the counter)
and credited to both paths, so TFLOP/s compares them on the same work. Peak memory is the CUDA allocator's
peak, or on CPU the growth of the process's peak resident memory (Linux).

Training configs run twice per path, with recomputation (Pips.set_recompute) off (everything stored) and
on; the table puts the two side by side with their ratios. On CPU each training row runs in a process of its
own, killed once its resident memory passes a cap (--mem_cap_gib), so a row that needs more becomes an
"out of memory" row instead of exhausting the machine; its peak is that process's whole peak resident memory
(VmHWM, as `/usr/bin/time -v` reports it), and its FLOPs are counted in the process of its exact
store-everything row.

With --agree_ckpt, the weights of a trained model track held-out synthetic clips from zero velocity on both
paths (the fast path autocasts per --precision, on CPU too); it reports the distance between the two paths'
tracks and each path's d_avg. Random weights would not do: their iterations amplify rounding rather than
converge.

With --videos, PipsTracker (random weights, exact path) tracks two points through generated mp4 videos of each
length at a small size, queried at the last frame (all backward) and at frame 0: wall time, time per video
frame, peak memory (growth of peak RSS on CPU, max allocated on CUDA) and frames decoded per video frame.
"""

import contextlib
import itertools
import json
import multiprocessing
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import torch
from prettytable import PrettyTable
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from datasets.sample import collate_clips
from datasets.synthetic import SyntheticClips
from nets import corr_triton
from nets.losses import sequence_loss
from nets.pips2 import Pips, frames_to_rgbs
from tracking.frames import VideoFileFrames
from tracking.predictor import PipsTracker, build_model
from utils.cli import explain_flags, run
from utils.dist import pick_device
from utils.metrics import compute_pips_metrics
from utils.video import write_video

AGREE_SEED = 2_000_003  # clips of the agreement check: neither train.py's training nor its validation clips
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class Config:
    name: str
    B: int
    S: int
    N: int
    H: int
    W: int
    iters: int
    train: bool = False  # forward, sequence_loss, backward, gradient clipping and an AdamW step
    official_s: float | None = None  # the official code on one H100 80GB, float32
    official_gib: float | None = None
    official_tflop: float | None = None


PRESETS = {
    "official": (
        Config("pips-jax", 1, 8, 256, 360, 640, 6, False, 0.131, 13.9, 0.71),
        Config("demo", 1, 48, 1024, 512, 896, 16, False, 1.19, 72.9, 31.2),
        Config("eval-window", 1, 128, 256, 512, 896, 16, False, 0.696, 69.9, 28.3),
        Config("train-step", 4, 36, 128, 256, 384, 6, True, 0.51, 67.5),
    ),
    "cpu": (
        Config("cpu-infer", 1, 8, 64, 128, 192, 2),
        Config("cpu-train", 1, 4, 32, 128, 192, 2, True),
    ),
    # one training step of the official recipe at B=1 and B=4, and of the high-resolution fine-tune recipe
    "train-memory": (
        Config("official-B1", 1, 36, 128, 256, 384, 6, True),
        Config("official-B4", 4, 36, 128, 256, 384, 6, True, 0.51, 67.5),
        Config("finetune", 1, 64, 128, 512, 896, 6, True),
    ),
}
RECOMPUTE = {"off": False, "on": True}


def make_inputs(cfg: Config, device: torch.device, seed: int) -> dict[str, torch.Tensor]:
    """Random frames and tracks; the initial trajectories hold the frame-0 points still, as at inference."""
    g = torch.Generator().manual_seed(seed)
    rgbs = torch.rand(cfg.B, cfg.S, 3, cfg.H, cfg.W, generator=g) * 255  # B,S,3,H,W
    size = torch.tensor([cfg.W - 1.0, cfg.H - 1.0])
    steps = torch.randn(cfg.B, cfg.S, cfg.N, 2, generator=g).cumsum(1)  # B,S,N,2
    trajs_g = (torch.rand(cfg.B, 1, cfg.N, 2, generator=g) * size + 4 * steps).clamp(min=0).minimum(size)
    inputs = {
        "rgbs": rgbs,
        "trajs_g": trajs_g,
        "trajs_e0": trajs_g[:, :1].expand(-1, cfg.S, -1, -1).contiguous(),  # B,S,N,2
        "valids": torch.ones(cfg.B, cfg.S, cfg.N),  # B,S,N
    }
    return {k: v.to(device) for k, v in inputs.items()}


def make_step(model: Pips, cfg: Config, inputs: dict[str, torch.Tensor]) -> Callable[[], None]:
    """One inference forward, or one training step (as train.py: clip 5.0, AdamW lr 5e-4, wd 1e-6)."""
    if not cfg.train:
        model.eval()

        def infer() -> None:
            with torch.no_grad():
                model(inputs["trajs_e0"], inputs["rgbs"], iters=cfg.iters)

        return infer
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=1e-6)

    def train_step() -> None:
        out = model(inputs["trajs_e0"], inputs["rgbs"], iters=cfg.iters)
        sequence_loss(out.preds, inputs["trajs_g"], inputs["valids"]).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return train_step


def count_flops(step: Callable[[], None]) -> int | None:
    """FLOPs of one call of `step`, or None when it runs out of GPU memory."""
    try:
        with FlopCounterMode(display=False) as counter:
            step()
    except torch.cuda.OutOfMemoryError:
        return None
    return counter.get_total_flops()


def _proc_status_kib(field: str, pid: int | str = "self") -> int | None:
    """A KiB field of /proc/<pid>/status (e.g. VmRSS, VmHWM); None where there is none (not Linux, gone)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def _reset_peak(device: torch.device) -> int | None:
    """Start a peak-memory window; returns the CPU baseline (KiB) where there is one."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return None
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    return _proc_status_kib("VmRSS")


def _read_peak_gib(device: torch.device, baseline: int | None) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    peak = _proc_status_kib("VmHWM")
    return None if peak is None or baseline is None else max(peak - baseline, 0) / 2**20


def time_step(step: Callable[[], None], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Seconds per call of `step`, after `warmup` untimed calls."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end) / 1000)
        else:
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    return times


def fast_dtype(precision: str, train: bool) -> torch.dtype:
    """The fast path's autocast dtype; 'auto' is what the scripts use on CUDA (bf16 trains, fp16 infers)."""
    if precision == "auto":
        return torch.bfloat16 if train else torch.float16
    if precision not in DTYPES:
        raise ValueError(f"precision must be auto, {', '.join(DTYPES)}; got {precision!r}")
    return DTYPES[precision]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _memory_kind(device: torch.device) -> str:
    return "CUDA max_memory_allocated" if device.type == "cuda" else "growth of peak RSS"


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"


def timed_model(
    device: torch.device,
    seed: int,
    fast: bool,
    dtype: torch.dtype,
    compile_parts: bool,
    recompute: bool = False,
) -> Pips:
    torch.manual_seed(seed)
    model = build_model(None, device, fast=False).set_fast(fast, dtype).set_recompute(recompute)
    if fast and compile_parts:
        model.compile_parts()
    return model


def available_memory_gib() -> float | None:
    """MemAvailable of /proc/meminfo in GiB (Linux), else None."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    return None


def _is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, (MemoryError, torch.cuda.OutOfMemoryError)) or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error)
    )


def exact_flops(cfg: Config, device: torch.device, inputs: dict, seed: int, dtype: torch.dtype) -> int | None:
    """FLOPs of one step of the exact path, everything stored (credited to every row of the config)."""
    return count_flops(make_step(timed_model(device, seed, False, dtype, False), cfg, inputs))


def measure_in_process(
    cfg: Config, path: str, recompute: bool, device: torch.device, inputs: dict, *, dtype: torch.dtype,
    compile: bool, warmup: int, repeats: int, seed: int,
) -> dict:  # fmt: skip
    """Step times and peak memory (CUDA allocator peak, or growth of peak RSS) of one row in this process."""
    try:
        step = make_step(timed_model(device, seed, path == "fast", dtype, compile, recompute), cfg, inputs)
        baseline = _reset_peak(device)
        times = time_step(step, device, warmup, repeats)
    except torch.cuda.OutOfMemoryError:
        return {"error": "out of memory"}
    return {"times_s": times, "peak_gib": _read_peak_gib(device, baseline)}


def measure_training_row(
    cfg: Config, path: str, recompute: bool, device: torch.device, *, dtype: torch.dtype, compile: bool,
    warmup: int, repeats: int, seed: int, count: bool,
) -> dict:  # fmt: skip
    """Step times and the whole peak resident memory of this process for one training row, and when
    `count` the FLOPs of the exact store-everything step, counted first (on CPU that is this row's own
    kind of step, so the count does not raise the peak)."""
    inputs = make_inputs(cfg, device, seed)
    flops = exact_flops(cfg, device, inputs, seed, dtype) if count else None
    step = make_step(timed_model(device, seed, path == "fast", dtype, compile, recompute), cfg, inputs)
    times = time_step(step, device, warmup, repeats)
    return {"flops": flops, "times_s": times, "peak_gib": _proc_status_kib("VmHWM") / 2**20}


def _training_row_process(conn: Connection, job: dict) -> None:
    """Entry of a row's own process: measure and send back the result."""
    try:
        result = measure_training_row(**job)
    except (MemoryError, RuntimeError) as error:
        if not _is_out_of_memory(error):
            raise
        result = {"error": "out of memory"}
    conn.send(result)


def measure_in_capped_process(job: dict, cap_gib: float, poll_s: float = 0.02) -> dict:
    """measure_training_row(**job) in a fresh process that is killed once its resident memory passes
    `cap_gib` (watched every `poll_s` seconds; a peak over the cap between two looks counts as over too)."""
    context = multiprocessing.get_context("spawn")  # a clean process: no forked threads or allocator state
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_training_row_process, args=(send, job))
    process.start()
    send.close()
    cap_kib, result = cap_gib * 2**20, None
    try:
        while not receive.poll(poll_s):
            if (_proc_status_kib("VmRSS", process.pid) or 0) > cap_kib:
                process.kill()
                process.join()
                return {"error": "out of memory"}
        result = receive.recv()
    except EOFError:  # it died without an answer
        result = None
    process.join()
    if result is None:
        if process.exitcode is not None and process.exitcode < 0:  # e.g. the kernel's OOM killer
            return {"error": f"killed (signal {-process.exitcode})"}
        raise RuntimeError(f"{job['cfg'].name} ({job['path']}) failed with exit code {process.exitcode}")
    if result.get("peak_gib", 0.0) > cap_gib:
        return {"error": "out of memory"}
    return result


def run_config(
    cfg: Config, paths: list[str], recompute: list[str], device: torch.device, *, precision: str,
    compile: bool, warmup: int, repeats: int, seed: int, mem_cap_gib: float, progress: tqdm,
) -> list[dict]:  # fmt: skip
    """The rows of one config: each path and, for a training config, each recompute state. Training rows
    on CPU run in processes of their own (measure_in_capped_process)."""
    dtype = fast_dtype(precision, cfg.train)
    isolate = cfg.train and device.type == "cpu"
    inputs = None if isolate else make_inputs(cfg, device, seed)
    flops = None if isolate else exact_flops(cfg, device, inputs, seed, dtype)
    timing = {"dtype": dtype, "compile": compile, "warmup": warmup, "repeats": repeats, "seed": seed}
    rows = []
    for path, state in itertools.product(paths, recompute if cfg.train else [None]):
        row = {**asdict(cfg), "path": path, "recompute": state, "flops": flops}
        row["dtype"] = dtype_name(dtype) if path == "fast" else "float32"
        if device.type != "cuda":
            row = {k: v for k, v in row.items() if not k.startswith("official")}
        on = RECOMPUTE.get(state, False)
        if isolate:
            count = path == "exact" and state == "off"
            job = {"cfg": cfg, "path": path, "recompute": on, "device": device, "count": count, **timing}
            row |= measure_in_capped_process(job, mem_cap_gib) | {"mem_cap_gib": mem_cap_gib}
        else:
            row |= measure_in_process(cfg, path, on, device, inputs, **timing)
        rows.append(row)
        progress.update()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if isolate:  # the exact store-everything row counted the FLOPs of every row
        counted = [r.get("flops") for r in rows if r["path"] == "exact" and r["recompute"] == "off"]
        for r in rows:
            r["flops"] = counted[0] if counted else None
    return [summarise(r, cfg) for r in rows]


def summarise(row: dict, cfg: Config) -> dict:
    """Median, min, frames/s, TFLOP/s and the official speed-up of a timed row."""
    if "error" in row:
        return row
    times = row["times_s"]
    median = statistics.median(times)
    row |= {"median_s": median, "min_s": min(times), "fps": cfg.B * cfg.S / median}
    row["tflops_per_s"] = None if row["flops"] is None else row["flops"] / median / 1e12
    if row.get("official_s"):
        row["speedup_vs_official"] = cfg.official_s / median
    return row


def compare_recompute(rows: list[dict]) -> None:
    """Give each recompute-on row its time and peak memory relative to the matching store-everything row."""
    off = {(r["name"], r["path"]): r for r in rows if r["recompute"] == "off" and "error" not in r}
    for r in rows:
        base = off.get((r["name"], r["path"]))
        if r["recompute"] == "on" and base is not None and "error" not in r:
            r["time_vs_off"] = r["median_s"] / base["median_s"]
            r["peak_vs_off"] = r["peak_gib"] / base["peak_gib"] if base["peak_gib"] else None


@torch.no_grad()
def measure_agreement(
    ckpt: str, device: torch.device, dtype: torch.dtype, clips: int, shape: tuple[int, ...], seed: int
) -> dict:
    """Track `clips` held-out synthetic clips of `shape` (S,N,H,W,iters) with the weights of `ckpt` on the
    exact and the fast path (autocast to `dtype`); the per-point distance between the two paths' tracks
    (pixels, frames 1..S-1) and each d_avg."""
    S, N, H, W, iters = shape
    model = build_model(ckpt, device, fast=False)
    data = SyntheticClips(S, N, (H, W), length=clips, seed=AGREE_SEED + seed)
    dists, d_avg = [], {"exact": [], "fast": []}
    for i in tqdm(range(clips), desc="agreement"):
        rgbs, trajs_g, _, valids = collate_clips([data[i]]).to(device)
        trajs_e0 = trajs_g[:, :1].expand_as(trajs_g).contiguous()
        tracks = {}
        for path in ("exact", "fast"):
            model.set_fast(path == "fast", dtype)
            tracks[path] = model(trajs_e0, frames_to_rgbs(rgbs), iters=iters).tracks
            d_avg[path].append(compute_pips_metrics(tracks[path], trajs_g, valids, H, W)["d_avg"])
        dists.append((tracks["fast"] - tracks["exact"])[:, 1:].norm(dim=-1).flatten().cpu())
    dist = torch.cat(dists).double()
    return {
        "ckpt": str(ckpt), "dtype": dtype_name(dtype), "clips": clips,
        "S": S, "N": N, "H": H, "W": W, "iters": iters,
        "median_px": dist.median().item(), "mean_px": dist.mean().item(), "p90_px": dist.quantile(0.9).item(),
        "d_avg_exact": statistics.mean(d_avg["exact"]), "d_avg_fast": statistics.mean(d_avg["fast"]),
    }  # fmt: skip


VIDEO_SIZE = (64, 64)  # H,W of the generated videos, which is also the model's resolution


def long_video(path: Path, T: int, seed: int) -> None:
    """A T-frame mp4 of a random texture drifting one pixel per frame (to the right, wrapping around)."""
    texture = torch.randint(0, 256, (*VIDEO_SIZE, 3), generator=torch.Generator().manual_seed(seed))
    frames = texture.to(torch.uint8).numpy()
    write_video(
        path, (frames.take(range(-t, VIDEO_SIZE[1] - t), axis=1, mode="wrap") for t in range(T)), fps=25
    )


def measure_video(tracker: PipsTracker, path: Path, T: int, where: str) -> dict:
    """One tracker call with both queries at frame T-1 ('last') or 0 ('first')."""
    t = T - 1 if where == "last" else 0
    queries = [[t, 20.0, 20.0], [t, 40.0, 30.0]]
    opened: list[VideoFileFrames] = []
    real_init = VideoFileFrames.__init__

    def recording_init(source: VideoFileFrames, *args: object, **kwargs: object) -> None:
        real_init(source, *args, **kwargs)
        opened.append(source)

    device = tracker.device
    VideoFileFrames.__init__ = recording_init
    try:
        baseline = _reset_peak(device)
        began = time.perf_counter()
        tracks = tracker(path, queries=queries)
        seconds = time.perf_counter() - began
        peak = _read_peak_gib(device, baseline)
    finally:
        VideoFileFrames.__init__ = real_init
    return {
        "frames": T, "queries_at": where, "tracked_frames": len(tracks), "seconds": seconds,
        "ms_per_frame": 1000 * seconds / T, "peak_mib": None if peak is None else peak * 1024,
        "decodes_per_frame": sum(source.frames_read for source in opened) / T,
    }  # fmt: skip


def run_videos(lengths: list[int], device: torch.device, seed: int, progress: tqdm) -> list[dict]:
    torch.manual_seed(seed)
    tracker = PipsTracker(
        build_model(None, device, fast=False), S=16, iters=1, image_size=VIDEO_SIZE
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        long_video(Path(tmp) / "warmup.mp4", 20, seed)
        for where in ("last", "first"):  # first calls allocate what later ones reuse: keep them out
            measure_video(tracker, Path(tmp) / "warmup.mp4", 20, where)
        for T in lengths:
            path = Path(tmp) / f"video_{T}.mp4"
            long_video(path, T, seed)
            for where in ("last", "first"):
                rows.append(measure_video(tracker, path, T, where))
                progress.update()
            path.unlink()
    return rows


def videos_table(rows: list[dict]) -> PrettyTable:
    table = PrettyTable(["frames", "queries at", "seconds", "ms/frame", "peak MiB", "decodes/frame"])
    for r in rows:
        peak = "-" if r["peak_mib"] is None else f"{r['peak_mib']:.1f}"
        table.add_row([r["frames"], r["queries_at"], f"{r['seconds']:.2f}", f"{r['ms_per_frame']:.2f}", peak,
                       f"{r['decodes_per_frame']:.3f}"])  # fmt: skip
    return table


def agreement_table(a: dict) -> PrettyTable:
    columns = ["fast dtype", "clips", "shape", "median px", "mean px", "p90 px", "d_avg exact", "d_avg fast"]
    table = PrettyTable(columns)
    cells = [f"{a[k]:.3f}" for k in ("median_px", "mean_px", "p90_px", "d_avg_exact", "d_avg_fast")]
    table.add_row([a["dtype"], a["clips"], f"S{a['S']} N{a['N']} {a['H']}x{a['W']} i{a['iters']}", *cells])
    return table


def format_table(rows: list[dict], official: bool) -> PrettyTable:
    columns = ["config", "path", "dtype", "recompute", "median s", "min s", "peak GiB", "time vs off"]
    columns += ["peak vs off", "frames/s", "TFLOP", "TFLOP/s"]
    if official:
        columns += ["official s", "official GiB", "official TFLOP", "speed-up"]
    table = PrettyTable(columns)

    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    for r in rows:
        shape = f"{r['name']} (B{r['B']} S{r['S']} N{r['N']} {r['H']}x{r['W']} i{r['iters']})"
        cells = [shape, r["path"], r["dtype"], r.get("recompute") or "-"]
        if "error" in r:
            cells += [r["error"]] + ["-"] * (len(columns) - 5)
        else:
            cells += [fmt(r["median_s"], ".4f"), fmt(r["min_s"], ".4f"), fmt(r["peak_gib"], ".2f")]
            cells += [fmt(r.get("time_vs_off"), ".2f"), fmt(r.get("peak_vs_off"), ".2f")]
            tflop = None if r["flops"] is None else r["flops"] / 1e12
            cells += [fmt(r["fps"], ".1f"), fmt(tflop, ".4f"), fmt(r["tflops_per_s"], ".3f")]
            if official:
                cells += [fmt(r.get("official_s"), ".3f"), fmt(r.get("official_gib"), ".1f")]
                cells += [fmt(r.get("official_tflop"), ".2f"), fmt(r.get("speedup_vs_official"), ".2f")]
        table.add_row(cells)
    return table


def parse_choices(text: str, allowed: tuple[str, ...], flag: str) -> list[str]:
    """A comma-separated list of some of `allowed`, in the order given."""
    chosen = [c.strip() for c in text.split(",") if c.strip()]
    if not chosen or set(chosen) - set(allowed):
        raise ValueError(f"{flag} must name {' and/or '.join(allowed)}, got {text!r}")
    return chosen


def select_configs(preset: str, configs: str, device: torch.device) -> tuple[Config, ...]:
    preset = preset or ("official" if device.type == "cuda" else "cpu")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    chosen = PRESETS[preset]
    if configs:
        names = [c.strip() for c in configs.split(",")]
        unknown = sorted(set(names) - {c.name for c in chosen})
        if unknown:
            have = [c.name for c in chosen]
            raise ValueError(f"unknown configs {unknown} in preset {preset!r}; it has {have}")
        chosen = tuple(c for c in chosen if c.name in names)
    return chosen


@explain_flags
def main(
    *,
    preset: str = "",  # official (H100 table), cpu (small), train-memory; default: official on CUDA, else cpu
    configs: str = "",  # comma-separated config names of the preset to run; default all
    S: int = 0,  # > 0: benchmark the custom shape B,S,N,H,W,iters,train instead of a preset
    B: int = 1,  # custom shape: batch size
    N: int = 256,  # custom shape: points per clip
    H: int = 512,  # custom shape: frame height
    W: int = 896,  # custom shape: frame width
    iters: int = 16,  # custom shape: refinement iterations
    train: bool = False,  # custom shape: time a training step instead of an inference forward
    paths: str = "exact,fast",  # comma-separated paths to time: exact (float32) and/or fast
    recompute: str = "off,on",  # training configs: Pips.set_recompute states to time, off and/or on
    mem_cap_gib: float = 0.0,  # CPU training rows: each row's resident-memory cap; 0 = 80% of the available
    precision: str = "auto",  # fast path's autocast: auto (bf16 to train, fp16 to infer), bf16, fp16, fp32
    compile: bool = False,  # torch.compile the encoder and delta block of the fast path
    warmup: int = 1,  # untimed calls before timing (the FLOP count runs one more)
    repeats: int = 5,  # timed calls; median and min are reported
    device: str = "",  # e.g. cuda:1 or cpu; default: CUDA if available
    seed: int = 0,  # seeds the random weights and inputs
    out: str = "benchmark.json",  # JSON with every row and the environment
    agree_ckpt: str = "",  # trained weights (file or run dir): compare the paths' tracks instead of timing
    agree_clips: int = 8,  # clips of the agreement check (S16 N64 128x192 i8, or the custom shape if --S > 0)
    videos: str = "",  # video lengths, e.g. 250,1000,4000: time PipsTracker through them
) -> None:
    dev = pick_device(device)
    if videos:
        try:
            lengths = [int(v) for v in videos.split(",")]
        except ValueError:
            raise ValueError(f"videos must be comma-separated frame counts, got {videos!r}") from None
        if not lengths or min(lengths) < 2:
            raise ValueError(f"videos must be lengths of at least 2 frames, got {videos!r}")
        with tqdm(total=2 * len(lengths), desc="videos") as progress:
            rows = run_videos(lengths, dev, seed, progress)
        print(videos_table(rows))
        env = {"device": device_name(dev), "torch": torch.__version__, "memory": _memory_kind(dev)}
        Path(out).write_text(json.dumps({"env": env, "videos": rows}, indent=2))
        print(f"wrote {out}")
        return
    if agree_ckpt:
        shape = (S, N, H, W, iters) if S > 0 else (16, 64, 128, 192, 8)
        dtype = fast_dtype(precision, train=False)
        agreement = measure_agreement(agree_ckpt, dev, dtype, agree_clips, shape, seed=seed)
        print(agreement_table(agreement))
        env = {"device": device_name(dev), "torch": torch.__version__}
        Path(out).write_text(json.dumps({"env": env, "agreement": agreement}, indent=2))
        print(f"wrote {out}")
        return
    path_list = parse_choices(paths, ("exact", "fast"), "paths")
    states = parse_choices(recompute, tuple(RECOMPUTE), "recompute")
    mem_cap_gib = mem_cap_gib or 0.8 * (available_memory_gib() or 8.0)
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    if S > 0:
        chosen = (Config("custom", B, S, N, H, W, iters, train),)
    else:
        chosen = select_configs(preset, configs, dev)
    rows = []
    total = sum(len(path_list) * (len(states) if cfg.train else 1) for cfg in chosen)
    with tqdm(total=total, desc="benchmark") as progress:
        for cfg in chosen:
            rows += run_config(
                cfg, path_list, states, dev, precision=precision, compile=compile, warmup=warmup,
                repeats=repeats, seed=seed, mem_cap_gib=mem_cap_gib, progress=progress,
            )  # fmt: skip
    compare_recompute(rows)
    print(format_table(rows, official=dev.type == "cuda"))
    memory = _memory_kind(dev)
    if dev.type == "cpu" and any(cfg.train for cfg in chosen):
        memory += f"; training rows: peak RSS of each row's own process, capped at {mem_cap_gib:.1f} GiB"
    print(f"peak GiB: {memory}")
    env = {
        "device": device_name(dev),
        "torch": torch.__version__,
        "fused_corr": corr_triton.available(torch.empty(0, device=dev)),
        "precision": precision,
        "compile": compile,
        "warmup": warmup,
        "repeats": repeats,
        "memory": memory,
    }
    Path(out).write_text(json.dumps({"env": env, "results": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    run(main)
