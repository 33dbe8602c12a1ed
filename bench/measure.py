"""Clocks, peak memory and FLOP counts: what the benchmark's rows are made of.

Peak memory is the CUDA allocator's peak on CUDA; on CPU (Linux) it is the growth of this process's peak
resident memory (VmHWM) over a window, or a whole process's peak where a row runs alone (isolation.py).
"""

import contextlib
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode


def proc_status_kib(field: str, pid: int | str = "self") -> int | None:
    """A KiB field of /proc/<pid>/status (e.g. VmRSS, VmHWM); None where there is none (not Linux, gone)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def reset_peak(device: torch.device) -> int | None:
    """Start a peak-memory window; returns the CPU baseline (KiB) where there is one."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return None
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    return proc_status_kib("VmRSS")


def read_peak_gib(device: torch.device, baseline: int | None) -> float | None:
    """The peak of the window that reset_peak started, in GiB; None where it cannot be read."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    peak = proc_status_kib("VmHWM")
    return None if peak is None or baseline is None else max(peak - baseline, 0) / 2**20


def process_peak_gib() -> float | None:
    """This process's whole peak resident memory (VmHWM, as `/usr/bin/time -v` reports it), in GiB."""
    peak = proc_status_kib("VmHWM")
    return None if peak is None else peak / 2**20


def available_memory_gib() -> float | None:
    """MemAvailable of /proc/meminfo in GiB (Linux), else None."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    return None


def time_step(step: Callable[[], None], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Seconds per call of `step`, after `warmup` untimed calls (CUDA events on CUDA)."""
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


def count_flops(step: Callable[[], None]) -> int | None:
    """FLOPs of one call of `step`, or None when it runs out of GPU memory."""
    try:
        with FlopCounterMode(display=False) as counter:
            step()
    except torch.cuda.OutOfMemoryError:
        return None
    return counter.get_total_flops()


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, (MemoryError, torch.cuda.OutOfMemoryError)) or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error)
    )


def memory_kind(device: torch.device) -> str:
    return "CUDA max_memory_allocated" if device.type == "cuda" else "growth of peak RSS"


def environment(device: torch.device) -> dict:
    """The device's name and the torch version, which every mode's JSON records."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {"device": name, "torch": torch.__version__}
