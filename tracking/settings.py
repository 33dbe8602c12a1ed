"""Inference settings: the full one (the reference model's, for a GPU) and the one sized for a CPU, which the
demo, PipsTracker and the hub entries pick where no GPU is found; and the expected time of a setting on the
CPU, which the evaluation scripts print before they start.

Cost per video frame, measured on the CPU: the encoder's grows with the frame's pixels, the delta block's
with points x iterations (about 30 MFLOP per point, frame and iteration); the correlations are a few percent.
The CPU setting cuts both until a 2-core machine tracks the demo's 372-frame video in about 3 minutes, the
export to onnxruntime included (README, "Inference on a CPU")."""

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch

from nets.corr import CorrBlock, build_pyramid
from nets.pips2 import Pips

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Setting:
    image_size: tuple[int, int]  # H,W the frames are resized to
    N: int  # points of the demo's grid
    iters: int  # refinement iterations per window
    S: int  # frames per window

    def describe(self, points: bool = True) -> str:
        H, W = self.image_size
        return f"{H}x{W}" + f", N={self.N}" * points + f", {self.iters} iterations, S={self.S}"

    def flags(self) -> str:
        H, W = self.image_size
        return f"--image_size {H},{W} --N {self.N} --iters {self.iters} --S {self.S}"

    def arguments(self) -> str:
        return f"S={self.S}, iters={self.iters}, image_size={self.image_size}"


FULL_SETTING = Setting(image_size=(512, 896), N=1024, iters=16, S=64)
CPU_SETTING = Setting(image_size=(160, 280), N=64, iters=4, S=32)


def setting_for(device: torch.device) -> Setting:
    """The CPU setting on a CPU, the full one on a GPU (CUDA or MPS)."""
    return CPU_SETTING if device.type == "cpu" else FULL_SETTING


def cpu_setting_line(full: str, given: Sequence[str] = (), points: bool = True) -> str:
    """The line that says the CPU setting was chosen and how to get the full one (`full`, as the caller
    spells it); `given` names the settings that were set anyway."""
    kept = f" ({', '.join(given)} as given)" if given else ""
    return f"no GPU found: CPU setting {CPU_SETTING.describe(points)}{kept}; the full setting: {full}"


def fill_setting(
    device: torch.device, S: int | None, iters: int | None, image_size: Sequence[int] | None
) -> tuple[int, int, tuple[int, int]]:
    """(S, iters, image_size) with the ones left None taken from setting_for(device); on a CPU, a warning
    (one logged line) says what was chosen."""
    setting = setting_for(device)
    given = [
        name for name, value in (("S", S), ("iters", iters), ("image_size", image_size)) if value is not None
    ]
    if device.type == "cpu" and len(given) < 3:
        logger.warning(cpu_setting_line(FULL_SETTING.arguments(), given, points=False))
    return (
        setting.S if S is None else S,
        setting.iters if iters is None else iters,
        setting.image_size if image_size is None else tuple(image_size),
    )


def _seconds(fn, *args: torch.Tensor) -> float:
    began = time.perf_counter()
    with torch.no_grad():
        fn(*args)
    return time.perf_counter() - began


def frame_seconds(model: Pips, image_size: tuple[int, int], points: int, iters: int, S: int = 64) -> float:
    """Seconds per video frame that `model` will take on its device at this setting: one frame's encoding
    (two frames timed after a first run that sets the kernels up), plus, per point and iteration, a frame's
    correlation and template sampling (on those two frames' pyramid) and delta-block pass (over windows
    of S frames, 64 points: fewer run faster per point than tracking does)."""
    device = next(model.parameters()).device
    H, W = image_size
    frames = torch.rand(1, 2, 3, H, W, device=device) * 255
    _seconds(model.encode, frames[:, :1])
    encode = _seconds(model.encode, frames) / 2
    with torch.no_grad():
        fmaps = model.encode(frames)  # 1,2,C,H8,W8
        corr = CorrBlock(build_pyramid(fmaps, model.corr_levels), model.corr_radius)
    n = 64
    coords = torch.rand(1, 2, n, 2, device=device) * torch.tensor([W, H], device=device) / model.stride
    sample = _seconds(partial(_sample_step, model, corr), fmaps, coords) / (2 * n)
    dim = model.delta_block.first_block_conv.conv.in_channels - model.latent_dim - 2
    fcorrs, flows = torch.randn(1, S, n, dim, device=device), torch.randn(1, S, n, 2, device=device)
    delta = _seconds(model.predict_delta, fcorrs, flows) / (S * n)
    return encode + (sample + delta) * points * iters


def _sample_step(model: Pips, corr: CorrBlock, fmaps: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """What an iteration samples besides the delta block: two templates and the correlations of three."""
    frames = torch.zeros(fmaps.shape[1], dtype=torch.long, device=fmaps.device)
    feats = [model.sample_templates(fmaps, coords, frames) for _ in range(2)]
    return corr.sample_concat((feats[0], *feats), coords)


def expected_time_line(
    model: Pips, image_size: tuple[int, int], iters: int, S: int, points: int = 256
) -> str:
    """One line: the expected time per video frame (and per 1000 frames) on the CPU at this setting."""
    seconds = frame_seconds(model, image_size, points, iters, S)
    H, W = image_size
    return (
        f"on the CPU expect about {seconds:.1f} s per video frame at {H}x{W}, {iters} iterations and "
        f"{points} points ({seconds * 1000 / 3600:.1f} h per 1000 frames); a GPU takes a fraction of that"
    )
