"""The time mode: time, peak memory and FLOPs of each workload on each path (exact float32, fast).

    python benchmark.py                                    # the official H100 workloads on CUDA, else small
    python benchmark.py --workloads eval-window --compile  # one of them, fast path compiled
    python benchmark.py --S 24 --N 512 --H 384 --W 512     # one custom workload
    python benchmark.py --preset train-memory              # training steps, recomputation off and on

Each row is timed after warm-up (CUDA events on CUDA), median and min over the repeats. FLOPs are counted
with torch's FlopCounterMode on one step of the exact path (the fused kernel is invisible to the counter)
and credited to every path, so TFLOP/s compares them on the same work. Peak memory is the CUDA allocator's
peak, or on CPU the growth of the process's peak resident memory (Linux). On CUDA the table adds the
official code's figures on one H100 and the speed-up over them.

Training workloads run once per path with recomputation (Pips.set_recompute) off (everything stored) and
once with it on; the table puts the two side by side with their ratios. On CPU each training row runs in a
process of its own, killed once its resident memory passes a cap (--mem_cap_gib), so a row that needs more
becomes an "out of memory" row instead of exhausting the machine; its peak is that process's whole peak
resident memory (VmHWM, as `/usr/bin/time -v` reports it), and its FLOPs are counted in the process of its
exact store-everything row.
"""

import itertools
import statistics
from collections.abc import Generator, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from prettytable import PrettyTable
from tqdm import tqdm

from bench.config import BenchConfig, Precision, fast_dtype
from bench.isolation import Note, run_capped
from bench.measure import (
    available_memory_gib,
    count_flops,
    environment,
    memory_kind,
    process_peak_gib,
    read_peak_gib,
    reset_peak,
    time_step,
)
from bench.paths import PathFn, PathOptions, exact
from bench.report import Report, cell, collect
from bench.workloads import PRESETS, Inputs, Workload, make_inputs, select_workloads
from nets import corr_triton
from utils.config import UsageError, knob, require
from utils.dist import pick_device

RECOMPUTE = {"off": False, "on": True}
CUSTOM = {"B": 1, "N": 256, "H": 512, "W": 896, "iters": 16, "train": False}  # a custom workload's defaults


@dataclass(frozen=True)
class TimingConfig(BenchConfig):
    preset: str = knob("", "official (the H100 table), cpu (small), train-memory; '' = official on CUDA")
    workloads: tuple[str, ...] = knob((), "names of the preset's workloads to time; empty = all")
    S: int | None = knob(
        None, "frames of a custom workload, timed instead of a preset (with --B ... --train)"
    )
    B: int | None = knob(None, "custom workload: clips per batch (default 1)")
    N: int | None = knob(None, "custom workload: points per clip (default 256)")
    H: int | None = knob(None, "custom workload: frame height (default 512)")
    W: int | None = knob(None, "custom workload: frame width (default 896)")
    iters: int | None = knob(None, "custom workload: refinement iterations (default 16)")
    train: bool | None = knob(None, "custom workload: time a training step instead of an inference forward")
    paths: tuple[str, ...] = knob(("exact", "fast"), "paths to time: exact (float32), fast (autocast, fused)")
    recompute: tuple[str, ...] = knob(("off", "on"), "training workloads: Pips.set_recompute states to time")
    mem_cap_gib: float | None = knob(
        None, "CPU training rows: resident-memory cap in GiB; none = 80% available"
    )
    precision: Precision = knob("auto", "fast path's autocast dtype; auto = bf16 to train, fp16 to infer")
    compile: bool = knob(False, "torch.compile the encoder and delta block of the fast path")
    warmup: int = knob(1, "untimed calls before timing (the FLOP count runs one more)")
    repeats: int = knob(5, "timed calls; median and min are reported")

    def __post_init__(self) -> None:
        require(self.preset in ("", *PRESETS), "preset", f"one of {', '.join(PRESETS)}", self.preset)
        require(self.S is None or self.S >= 2, "S", "at least 2", self.S)
        if self.S is None:
            for name, value in self._custom().items():
                require(value is None, name, "given with --S (a custom workload)", value)
        elif self.preset or self.workloads:
            raise UsageError("--S times a custom workload: give it without --preset and --workloads")
        for name in ("B", "N", "H", "W", "iters"):
            value = getattr(self, name)
            require(value is None or value >= 1, name, "at least 1", value)
        require(bool(self.paths), "paths", "at least one path", self.paths)
        known = bool(self.recompute) and set(self.recompute) <= set(RECOMPUTE)
        require(known, "recompute", "off and/or on", self.recompute)
        require(self.mem_cap_gib is None or self.mem_cap_gib > 0, "mem_cap_gib", "positive", self.mem_cap_gib)
        require(self.warmup >= 0, "warmup", "0 or more", self.warmup)
        require(self.repeats >= 1, "repeats", "at least 1", self.repeats)

    def _custom(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in CUSTOM}

    def custom(self) -> Workload:
        """The workload of --S and its companions."""
        given = {name: value for name, value in self._custom().items() if value is not None}
        return Workload("custom", S=self.S, **(CUSTOM | given))


def measure(
    path: PathFn, w: Workload, inputs: Inputs, options: PathOptions, warmup: int, repeats: int
) -> dict:
    """The step times and peak memory (CUDA allocator peak, or growth of peak RSS) of one row, here."""
    found: dict[str, Any] = {}
    try:
        step = path(w, inputs, options)
        found["dtype"] = step.dtype
        baseline = reset_peak(options.device)
        found["times_s"] = time_step(step.run, options.device, warmup, repeats)
    except torch.cuda.OutOfMemoryError:
        return found | {"error": "out of memory"}
    return found | {"peak_gib": read_peak_gib(options.device, baseline)}


def measure_alone(
    path: PathFn, w: Workload, options: PathOptions, warmup: int, repeats: int, count: bool, note: Note
) -> None:
    """One row in a process of its own (isolation.run_capped): its inputs, when `count` the FLOPs of the
    exact store-everything step, counted first (on CPU that is this row's own kind of step, so the count
    does not raise the peak), then the step times and the whole peak resident memory of the process."""
    inputs = make_inputs(w, options.device, options.seed)
    if count:
        note({"flops": count_flops(exact(w, inputs, options._replace(recompute=False)).run)})
    step = path(w, inputs, options)
    note({"dtype": step.dtype})
    times = time_step(step.run, options.device, warmup, repeats)
    note({"times_s": times, "peak_gib": process_peak_gib()})


def summarise(row: dict, w: Workload) -> dict:
    """Median, min, frames/s, TFLOP/s and the official speed-up of a timed row (again when its FLOPs come)."""
    if "error" in row:
        return row
    median = statistics.median(row["times_s"])
    row |= {"median_s": median, "min_s": min(row["times_s"]), "fps": w.B * w.S / median}
    row["tflops_per_s"] = None if row["flops"] is None else row["flops"] / median / 1e12
    if row.get("official_s"):
        row["speedup_vs_official"] = w.official_s / median
    return row


def compare_recompute(rows: list[dict]) -> None:
    """Give each recompute-on row its time and peak memory relative to the matching store-everything row."""
    off = {(r["name"], r["path"]): r for r in rows if r["recompute"] == "off" and "error" not in r}
    for r in rows:
        base = off.get((r["name"], r["path"]))
        if r["recompute"] == "on" and base is not None and "error" not in r:
            r["time_vs_off"] = r["median_s"] / base["median_s"]
            r["peak_vs_off"] = r["peak_gib"] / base["peak_gib"] if base["peak_gib"] else None


def workload_rows(
    w: Workload, cfg: TimingConfig, paths: Mapping[str, PathFn], device: torch.device, cap_gib: float
) -> Iterator[dict]:
    """The rows of one workload, each as it ends: each path and, for a training workload, each recompute
    state. Training rows on CPU run in processes of their own (measure_alone)."""
    isolate = w.train and device.type == "cpu"
    dtype = fast_dtype(cfg.precision, w.train)
    inputs = None if isolate else make_inputs(w, device, cfg.seed)
    options = PathOptions(device, cfg.seed, dtype, cfg.compile, recompute=False)
    flops = None if isolate else count_flops(exact(w, inputs, options).run)
    rows: list[dict] = []
    for name, state in itertools.product(cfg.paths, cfg.recompute if w.train else [None]):
        row = {**asdict(w), "path": name, "recompute": state, "flops": flops}
        if device.type != "cuda":
            row = {k: v for k, v in row.items() if not k.startswith("official")}
        options = options._replace(recompute=RECOMPUTE.get(state, False))
        if isolate:
            count = name == "exact" and state == "off"
            args = (paths[name], w, options, cfg.warmup, cfg.repeats, count)
            row |= run_capped(measure_alone, args, cap_gib, f"{w.name} ({name})") | {"mem_cap_gib": cap_gib}
        else:
            row |= measure(paths[name], w, inputs, options, cfg.warmup, cfg.repeats)
        rows.append(row)
        if row["flops"] is not None and flops is None:  # one row process counts them for every row
            flops = row["flops"]
            for r in rows:
                r["flops"] = flops
        for r in rows:
            summarise(r, w)
        yield row
        if device.type == "cuda":
            torch.cuda.empty_cache()


def timing_rows(
    workloads: tuple[Workload, ...],
    cfg: TimingConfig,
    paths: Mapping[str, PathFn],
    device: torch.device,
    cap_gib: float,
) -> Generator[dict, None, None]:
    """Every workload's rows, each as it ends, with a progress bar and the recompute ratios."""
    rows: list[dict] = []
    total = sum(len(cfg.paths) * (len(cfg.recompute) if w.train else 1) for w in workloads)
    with tqdm(total=total, desc="benchmark") as progress:
        for w in workloads:
            for row in workload_rows(w, cfg, paths, device, cap_gib):
                rows.append(row)
                compare_recompute(rows)
                progress.update()
                yield row


def format_table(rows: list[dict], official: bool) -> PrettyTable:
    columns = ["workload", "path", "dtype", "recompute", "median s", "min s", "peak GiB", "time vs off"]
    columns += ["peak vs off", "frames/s", "TFLOP", "TFLOP/s"]
    if official:
        columns += ["official s", "official GiB", "official TFLOP", "speed-up"]
    table = PrettyTable(columns)
    for r in rows:
        shape = f"{r['name']} (B{r['B']} S{r['S']} N{r['N']} {r['H']}x{r['W']} i{r['iters']})"
        cells = [shape, r["path"], r.get("dtype", "-"), r.get("recompute") or "-"]
        if "error" in r:
            cells += [r["error"]] + ["-"] * (len(columns) - 5)
        else:
            cells += [cell(r["median_s"], ".4f"), cell(r["min_s"], ".4f"), cell(r["peak_gib"], ".2f")]
            cells += [cell(r.get("time_vs_off"), ".2f"), cell(r.get("peak_vs_off"), ".2f")]
            tflop = None if r["flops"] is None else r["flops"] / 1e12
            cells += [cell(r["fps"], ".1f"), cell(tflop, ".4f"), cell(r["tflops_per_s"], ".3f")]
            if official:
                cells += [cell(r.get("official_s"), ".3f"), cell(r.get("official_gib"), ".1f")]
                cells += [cell(r.get("official_tflop"), ".2f"), cell(r.get("speedup_vs_official"), ".2f")]
        table.add_row(cells)
    return table


def main(cfg: TimingConfig, paths: Mapping[str, PathFn]) -> None:
    """The time mode, with `paths` naming the paths that --paths may choose."""
    unknown = [name for name in cfg.paths if name not in paths]
    require(not unknown, "paths", f"some of {', '.join(paths)}", cfg.paths)
    device = pick_device(cfg.device)
    workloads = (cfg.custom(),) if cfg.S is not None else select_workloads(cfg.preset, cfg.workloads, device)
    cap_gib = cfg.mem_cap_gib or 0.8 * (available_memory_gib() or 8.0)
    memory = memory_kind(device)
    if device.type == "cpu" and any(w.train for w in workloads):
        memory += f"; training rows: peak RSS of each row's own process, capped at {cap_gib:.1f} GiB"
    env = environment(device) | {
        "mode": "time",
        "fused_corr": corr_triton.available(torch.empty(0, device=device)),
        "precision": cfg.precision,
        "compile": cfg.compile,
        "warmup": cfg.warmup,
        "repeats": cfg.repeats,
        "memory": memory,
    }
    report = Report(cfg.out, env)
    rows = collect(timing_rows(workloads, cfg, paths, device, cap_gib), report)
    print(format_table(rows, official=device.type == "cuda"))
    print(f"peak GiB: {memory}")
    print(f"wrote {cfg.out}")
