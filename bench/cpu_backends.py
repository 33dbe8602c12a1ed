"""One Pips window on the CPU, backend by backend: PyTorch eager float32, PyTorch with the encoder and the
delta block compiled by torch.compile (inductor), onnxruntime on the exported window (export_onnx.py), and
onnxruntime on that graph quantised to int8 (dynamic quantisation of its weights).

    python -m bench.cpu_backends                       # the CPU demo setting (tracking/settings.py)
    python -m bench.cpu_backends --image_size 256,448 --N 256 --iters 6 --S 32 --json rows.json

Each backend runs the same window (a textured frame sequence, a grid of points, zero-velocity start) once to
warm up (torch.compile compiles there, onnxruntime builds its session before it) and then `repeats` times;
a row gives the median time per window and per frame, the speed-up over eager float32, the time a video of
`video_frames` frames would take from a cold start (compiling, exporting or quantising included: what a
demo run pays) and the largest distance of its tracks from eager's. The weights are random with the delta
block's output scaled by 0.1: full-size random updates would amplify rounding from iteration to iteration,
trained weights do not.
Timings on a machine shared with other work are noisy: run it more than once.
"""

import copy
import json
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from prettytable import PrettyTable

from nets.pips2 import Pips, PipsOutput
from tracking.onnx_backend import OnnxWindow, onnxruntime
from tracking.onnx_export import export_window
from tracking.settings import CPU_SETTING
from utils.config import knob, run

VIDEO_FRAMES = 372  # the demo's example video
AGREE_PX = 1e-3  # a backend agrees with eager float32 when no track moves further than this
DAMPING = 0.1

Window = Callable[[torch.Tensor, torch.Tensor, int], PipsOutput]


def damped_model(seed: int = 0) -> Pips:
    """Random Pips weights with the delta block's output scaled by DAMPING (see the module docstring)."""
    torch.manual_seed(seed)
    model = Pips().eval()
    with torch.no_grad():
        model.delta_block.dense.weight.mul_(DAMPING)
        model.delta_block.dense.bias.mul_(DAMPING)
    return model


def window_inputs(S: int, N: int, image_size: tuple[int, int], seed: int = 0) -> tuple[torch.Tensor, ...]:
    """(trajs_e0 1,S,N,2, rgbs 1,S,3,H,W): a smooth texture drifting right by a pixel a frame, and a square
    grid of about N points at frame 0 held still over the window."""
    H, W = image_size
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, H // 8 + 1, W // 8 + 2, generator=g) * 255
    texture = torch.nn.functional.interpolate(coarse, size=(H, W + S), mode="bilinear", align_corners=False)
    rgbs = torch.stack([texture[0, :, :, S - t : S - t + W] for t in range(S)])[None]  # 1,S,3,H,W
    side = max(1, round(N**0.5))
    ys, xs = torch.meshgrid(torch.linspace(8, H - 9, side), torch.linspace(8, W - 9, side), indexing="ij")
    xy = torch.stack([xs.flatten(), ys.flatten()], -1)[:N]  # N',2
    return xy[None, None].repeat(1, S, 1, 1), rgbs  # 1,S,N',2


def _time(window: Window, trajs: torch.Tensor, rgbs: torch.Tensor, iters: int, repeats: int) -> tuple:
    """(first call s, median s over `repeats` later calls, tracks of the last call)."""
    with torch.no_grad():
        began = time.perf_counter()
        out = window(trajs, rgbs, iters)
        first = time.perf_counter() - began
        times = []
        for _ in range(repeats):
            began = time.perf_counter()
            out = window(trajs, rgbs, iters)
            times.append(time.perf_counter() - began)
    return first, statistics.median(times), out.tracks


def _backends(model: Pips, S: int, image_size: tuple[int, int], iters: int, folder: Path, quantize: bool):
    """(name, how the window is made) for each backend; a maker returns (window, seconds it took, note)."""

    def eager():
        return (lambda trajs, rgbs, it: model(trajs, rgbs, iters=it)), 0.0, ""

    def compiled():
        parts = copy.deepcopy(model).compile_parts()
        return (lambda trajs, rgbs, it: parts(trajs, rgbs, iters=it)), 0.0, "first call compiles"

    def exported():
        began = time.perf_counter()
        export_window(model, folder / "window.onnx", S, image_size, iters)
        session = OnnxWindow(folder / "window.onnx", ("CPUExecutionProvider",), torch.get_num_threads())
        return session, time.perf_counter() - began, "export + session"

    def quantised():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        began = time.perf_counter()
        if not (folder / "window.onnx").exists():
            export_window(model, folder / "window.onnx", S, image_size, iters)
        quantize_dynamic(folder / "window.onnx", folder / "window-int8.onnx", weight_type=QuantType.QInt8)
        session = OnnxWindow(folder / "window-int8.onnx", ("CPUExecutionProvider",), torch.get_num_threads())
        return session, time.perf_counter() - began, "quantise + session"

    makers = [("PyTorch eager float32", eager), ("torch.compile (inductor)", compiled)]
    makers.append(("onnxruntime float32", exported))
    if quantize:
        makers.append(("onnxruntime int8 (dynamic)", quantised))
    return makers


@dataclass(frozen=True)
class CpuBackendsConfig:
    image_size: tuple[int, int] = knob(CPU_SETTING.image_size, "H,W of the frames")
    S: int = knob(CPU_SETTING.S, "frames per window")
    N: int = knob(CPU_SETTING.N, "points (a square grid)")
    iters: int = knob(CPU_SETTING.iters, "refinement iterations")
    repeats: int = knob(2, "timed windows per backend, after one warm-up window")
    threads: int = knob(0, "torch and onnxruntime threads; 0 = torch's default")
    compile: bool = knob(True, "include torch.compile (minutes of compiling on a small CPU)")
    quantize: bool = knob(True, "include onnxruntime with int8 dynamic quantisation")
    video_frames: int = knob(VIDEO_FRAMES, "frames of the video whose cold-start time each row gives")
    json: str = knob("", "also write the rows to this JSON file")


def cpu_backend_rows(
    image_size: tuple[int, int] = CPU_SETTING.image_size,
    S: int = CPU_SETTING.S,
    N: int = CPU_SETTING.N,
    iters: int = CPU_SETTING.iters,
    repeats: int = 2,
    threads: int = 0,
    compile: bool = True,
    quantize: bool = True,
    video_frames: int = VIDEO_FRAMES,
) -> list[dict]:
    """One row per backend, in one process: backend, setting, first_call_s (compiling, exporting or
    quantising included), window_s and ms_per_frame (median), speedup (eager time / this time), video_s
    (first call, then the rest of the windows of a video_frames-frame video), max_diff_px (from eager's
    tracks), agrees (max_diff_px <= AGREE_PX) and note (why a backend did not run)."""
    if threads:
        torch.set_num_threads(threads)
    model = damped_model()
    trajs, rgbs = window_inputs(S, N, image_size)
    H, W = image_size
    setting = f"{H}x{W}, S={S}, N={trajs.shape[2]}, {iters} iterations, {torch.get_num_threads()} threads"
    rows, reference, eager_s = [], None, None
    windows = math.ceil((video_frames - 1) / (S - 1))  # windows of S frames overlapping by one
    with tempfile.TemporaryDirectory() as tmp:
        backends = _backends(model, S, image_size, iters, Path(tmp), quantize)
        for name, make in backends if compile else [b for b in backends if "compile" not in b[0]]:
            row = {"backend": name, "setting": setting}
            try:
                if name.startswith("onnxruntime"):
                    onnxruntime()
                window, made_s, note = make()
                first, median, tracks = _time(window, trajs, rgbs, iters, repeats)
            except Exception as err:  # a backend that cannot run here is a row that says why
                why = " ".join(str(err).split())[:200]
                rows.append(row | {"note": f"failed: {type(err).__name__}: {why}"})
                continue
            reference = tracks if reference is None else reference
            eager_s = median if eager_s is None else eager_s
            diff = float((tracks - reference).abs().max())
            row |= {
                "first_call_s": round(made_s + first, 2),
                "window_s": round(median, 3),
                "ms_per_frame": round(1000 * median / S, 1),
                "speedup": round(eager_s / median, 2),
                "video_s": round(made_s + first + (windows - 1) * median, 1),
                "max_diff_px": diff,
                "agrees": diff <= AGREE_PX,
                "note": note,
            }
            rows.append(row)
    return rows


def table(rows: list[dict]) -> PrettyTable:
    columns = ["backend", "window_s", "ms_per_frame", "speedup", "video_s", "max_diff_px", "agrees"]
    columns.append("first_call_s")
    out = PrettyTable([*columns, "note"])
    for row in rows:
        cells = [f"{row[c]:.1e}" if c == "max_diff_px" and c in row else row.get(c, "") for c in columns]
        out.add_row([*cells, row.get("note", "")])
    out.align = "r"
    return out


def main(cfg: CpuBackendsConfig) -> None:
    rows = cpu_backend_rows(
        cfg.image_size,
        cfg.S,
        cfg.N,
        cfg.iters,
        cfg.repeats,
        cfg.threads,
        cfg.compile,
        cfg.quantize,
        cfg.video_frames,
    )
    print(rows[0]["setting"])
    print(table(rows))
    if cfg.json:
        Path(cfg.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    run(main, CpuBackendsConfig)
