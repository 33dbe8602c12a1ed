"""Training/evaluation logging: a parameter table, running means and a thin TensorBoard wrapper."""

import math
import time
from collections import defaultdict, deque
from pathlib import Path

import imageio.v3
import numpy as np
import torch.nn as nn
from prettytable import PrettyTable
from tensorboardX.proto.summary_pb2 import Summary


def parameter_table(model: nn.Module, min_params: int = 100_000) -> str:
    """Rows for parameters with more than `min_params` entries, and the total in millions (17.57 M)."""
    table = PrettyTable(["module", "params"])
    table.align["module"] = "l"
    table.align["params"] = "r"
    total = 0
    for name, p in model.named_parameters():
        total += p.numel()
        if p.numel() > min_params:
            table.add_row([name, f"{p.numel():,}"])
    return f"{table}\ntotal params: {total / 1e6:.2f} M"


class RunningMeans:
    """Means over the last `window` finite values of each key (the official pools); NaN while empty."""

    def __init__(self, window: int = 1000) -> None:
        self.values: dict[str, deque] = defaultdict(lambda: deque(maxlen=window))

    def update(self, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            if math.isfinite(v):
                self.values[k].append(float(v))

    def mean(self, key: str) -> float:
        vals = self.values.get(key)
        return float(np.mean(vals)) if vals else float("nan")

    def means(self) -> dict[str, float]:
        return {k: self.mean(k) for k in self.values}


class Pace:
    """Steps per second over the last `window` steps (data, validation and saves included), and the time
    left at that pace. The first step, which also pays for warm-up, is left out of the pace."""

    def __init__(self, window: int = 50) -> None:
        self.times: deque[float] = deque(maxlen=window + 1)

    def tick(self) -> None:
        """Call once after each step."""
        self.times.append(time.perf_counter())

    def steps_per_s(self) -> float:
        """0 until two steps are done."""
        if len(self.times) < 2:
            return 0.0
        return (len(self.times) - 1) / max(self.times[-1] - self.times[0], 1e-9)

    def eta(self, steps_left: int) -> str:
        """h:mm:ss for `steps_left` more steps at the current pace; '?' until two steps are done."""
        if len(self.times) < 2:
            return "?"
        seconds = round(steps_left / self.steps_per_s())
        return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Logger:
    """TensorBoard scalars and gifs (tensorboardX); a no-op when disabled (e.g. on ranks other than 0)."""

    def __init__(self, log_dir: str | Path, enabled: bool = True) -> None:
        self.writer = None
        if enabled:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(str(log_dir), max_queue=10, flush_secs=60)

    def scalars(self, step: int, metrics: dict[str, float], prefix: str = "") -> None:
        if self.writer is None:
            return
        for k, v in metrics.items():
            if math.isfinite(v):
                self.writer.add_scalar(f"{prefix}{k}", v, step)

    def gif(self, tag: str, frames: np.ndarray, step: int, fps: int = 8) -> None:
        """frames T,H,W,3 uint8, shown as an animated image in TensorBoard's image tab."""
        if self.writer is None:
            return
        T, H, W, _ = frames.shape
        data = imageio.v3.imwrite("<bytes>", frames, extension=".gif", duration=1000 / fps, loop=0)
        image = Summary.Image(height=H, width=W, colorspace=3, encoded_image_string=data)
        summary = Summary(value=[Summary.Value(tag=tag, image=image)])
        self.writer._get_file_writer().add_summary(summary, step)

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        """image H,W,3 uint8."""
        if self.writer is not None:
            self.writer.add_image(tag, image, step, dataformats="HWC")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
