"""torch.hub entry points.

    model = torch.hub.load("path/to/repo", "pips2", source="local", pretrained=True)
    tracker = torch.hub.load("path/to/repo", "pips2_tracker", source="local")
    tracks = tracker("video.mp4", grid_size=32)  # T,1024,2 in the video's pixels

pretrained=True uses <repo>/reference_model, downloading it with get_reference_model.sh when absent.
"""

import subprocess
from pathlib import Path
from typing import Any

import torch

from nets.pips2 import Pips
from tracking.predictor import PipsTracker, build_model
from utils import checkpoint

dependencies = ["cv2", "einops", "imageio", "imageio_ffmpeg", "numpy", "torch"]

REPO_DIR = Path(__file__).resolve().parent
REFERENCE_DIR = REPO_DIR / checkpoint.REFERENCE_DIR
DOWNLOAD_SCRIPT = REPO_DIR / "get_reference_model.sh"


def _reference_dir() -> Path:
    """REFERENCE_DIR, after downloading the reference model into it if it holds no checkpoint."""
    if checkpoint.latest_checkpoint(REFERENCE_DIR) is None:
        result = subprocess.run(["bash", str(DOWNLOAD_SCRIPT)], capture_output=True, text=True)
        if result.returncode != 0:
            lines = result.stderr.strip().splitlines() or [f"exit status {result.returncode}"]
            raise RuntimeError(
                f"could not download the reference model into {REFERENCE_DIR} ({lines[-1]}); run "
                f"{DOWNLOAD_SCRIPT.name} once online, or load with pretrained=False"
            )
    return REFERENCE_DIR


def pips2(pretrained: bool = False, vis_head: bool | None = None) -> Pips:
    """The PIPs++ network on the CPU, exact float32 path; pretrained=True loads the published reference
    weights. vis_head: with the visibility head (None = as the weights have it); the reference weights
    have none, so with vis_head=True its head starts untrained."""
    return build_model(_reference_dir() if pretrained else None, "cpu", fast=False, vis_head=vis_head)


def pips2_tracker(
    pretrained: bool = True, device: torch.device | str | None = None, fast: bool = True, **kwargs: Any
) -> PipsTracker:
    """A PipsTracker (tracking/predictor.py) on `device` (None = best available), on the fast path where it
    pays unless `fast` is False; kwargs: S, iters, image_size (those not given: the full setting on a GPU, the
    CPU setting elsewhere, logged in one line). `tracker.predict(...)` gives visibility and confidence beside
    the tracks where the weights have a visibility head."""
    model = build_model(_reference_dir() if pretrained else None, "" if device is None else device, fast=fast)
    return PipsTracker(model, **kwargs)
