"""What the time mode times: one inference forward or one training step of Pips at a given size, the
presets that group them (the official H100 table, small CPU ones, the training-memory recipes), and their
random inputs."""

from dataclasses import dataclass
from typing import NamedTuple

import torch


@dataclass(frozen=True)
class Workload:
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
        Workload("pips-jax", 1, 8, 256, 360, 640, 6, False, 0.131, 13.9, 0.71),
        Workload("demo", 1, 48, 1024, 512, 896, 16, False, 1.19, 72.9, 31.2),
        Workload("eval-window", 1, 128, 256, 512, 896, 16, False, 0.696, 69.9, 28.3),
        Workload("train-step", 4, 36, 128, 256, 384, 6, True, 0.51, 67.5),
    ),
    "cpu": (
        Workload("cpu-infer", 1, 8, 64, 128, 192, 2),
        Workload("cpu-train", 1, 4, 32, 128, 192, 2, True),
    ),
    # one training step of the official recipe at B=1 and B=4, and of the high-resolution fine-tune recipe
    "train-memory": (
        Workload("official-B1", 1, 36, 128, 256, 384, 6, True),
        Workload("official-B4", 4, 36, 128, 256, 384, 6, True, 0.51, 67.5),
        Workload("finetune", 1, 64, 128, 512, 896, 6, True),
    ),
}


def select_workloads(preset: str, names: tuple[str, ...], device: torch.device) -> tuple[Workload, ...]:
    """The workloads of `preset` ('' = official on CUDA, else cpu) named in `names` (empty = all)."""
    preset = preset or ("official" if device.type == "cuda" else "cpu")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    chosen = PRESETS[preset]
    unknown = sorted(set(names) - {w.name for w in chosen})
    if unknown:
        have = [w.name for w in chosen]
        raise ValueError(f"unknown workloads {unknown} in preset {preset!r}; it has {have}")
    return tuple(w for w in chosen if w.name in names) if names else chosen


class Inputs(NamedTuple):
    rgbs: torch.Tensor  # B,S,3,H,W float 0..255
    trajs_g: torch.Tensor  # B,S,N,2 random walks inside the frame
    trajs_e0: torch.Tensor  # B,S,N,2 the frame-0 points held still, as at inference
    valids: torch.Tensor  # B,S,N


def make_inputs(w: Workload, device: torch.device, seed: int) -> Inputs:
    """Random frames and tracks of the workload's size on `device`."""
    g = torch.Generator().manual_seed(seed)
    rgbs = torch.rand(w.B, w.S, 3, w.H, w.W, generator=g) * 255  # B,S,3,H,W
    size = torch.tensor([w.W - 1.0, w.H - 1.0])
    steps = torch.randn(w.B, w.S, w.N, 2, generator=g).cumsum(1)  # B,S,N,2
    trajs_g = (torch.rand(w.B, 1, w.N, 2, generator=g) * size + 4 * steps).clamp(min=0).minimum(size)
    trajs_e0 = trajs_g[:, :1].expand(-1, w.S, -1, -1).contiguous()  # B,S,N,2
    valids = torch.ones(w.B, w.S, w.N)  # B,S,N
    return Inputs(*(t.to(device) for t in (rgbs, trajs_g, trajs_e0, valids)))
