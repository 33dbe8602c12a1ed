"""The typed training/evaluation clip that every reader returns, and how readers report unreadable data."""

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

logger = logging.getLogger(__name__)


class UnreadableMarks:
    """Which of a reader's items (sequences or clips) turned out unreadable while reading.

    The marks live in shared memory, so DataLoader worker processes skip what another one found, and the
    main process can count them for its summary.
    """

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)
        self.flags = torch.zeros(len(self.names), dtype=torch.bool).share_memory_()  # K

    def mark(self, index: int, err: Exception) -> None:
        """Mark item `index` unreadable; the first mark warns with the reason."""
        if not self.flags[index]:
            self.flags[index] = True
            logger.warning("skipping %s: %s", self.names[index], err)

    def __contains__(self, index: int) -> bool:
        return bool(self.flags[index])

    def __getitem__(self, part: slice) -> "UnreadableMarks":
        """The marks of items `part`, still shared with these."""
        marks = UnreadableMarks([])
        marks.names, marks.flags = self.names[part], self.flags[part]
        return marks

    def all_marked(self) -> bool:
        return bool(self.flags.all())

    def found(self) -> list[str]:
        """Names of the marked items, in index order."""
        return [name for name, bad in zip(self.names, self.flags.tolist()) if bad]


@dataclass
class ClipSample:
    """One clip of S frames with N tracked points, in the pixel coordinates of `rgbs`.

    Coordinates are x then y, pixel centres at integers. Padding points (when fewer than N
    were available) have trajs, visibs and valids all zero.
    """

    rgbs: np.ndarray  # S,H,W,3 uint8 RGB, which nets.pips2.frames_to_rgbs turns into the input of Pips
    trajs: np.ndarray  # S,N,2 float32, x,y pixels
    visibs: np.ndarray  # S,N float32, 1 = visible
    valids: np.ndarray  # S,N float32, 1 = annotation valid (occluded points included)

    def __post_init__(self) -> None:
        if self.rgbs.ndim != 4 or self.rgbs.shape[-1] != 3 or self.rgbs.dtype != np.uint8:
            raise ValueError(f"rgbs must be S,H,W,3 uint8, got {self.rgbs.shape} {self.rgbs.dtype}")
        S = self.rgbs.shape[0]
        if self.trajs.shape[0] != S or self.trajs.shape[-1] != 2:
            raise ValueError(f"trajs must be S,N,2 with S={S}, got {self.trajs.shape}")
        N = self.trajs.shape[1]
        for name in ("visibs", "valids"):
            if getattr(self, name).shape != (S, N):
                raise ValueError(f"{name} must be {(S, N)}, got {getattr(self, name).shape}")

    @property
    def track_g(self) -> np.ndarray:
        """S,N,4 float32 = x, y, vis, valid (the exported-clip format)."""
        return np.concatenate([self.trajs, self.visibs[..., None], self.valids[..., None]], axis=-1).astype(
            np.float32
        )


class ClipBatch(NamedTuple):
    rgbs: torch.Tensor  # B,S,H,W,3 uint8
    trajs: torch.Tensor  # B,S,N,2
    visibs: torch.Tensor  # B,S,N
    valids: torch.Tensor  # B,S,N

    def to(self, device: torch.device | str) -> "ClipBatch":
        return ClipBatch(*(x.to(device, non_blocking=True) for x in self))


def collate_clips(samples: list[ClipSample]) -> ClipBatch:
    """Stack ClipSamples into a batch of tensors (the DataLoader's collate_fn)."""
    return ClipBatch(
        *(torch.from_numpy(np.stack([getattr(s, k) for s in samples])) for k in ClipBatch._fields)
    )


class UnreadableSequence(ValueError):
    """A sequence or clip whose files turned out unreadable when it was read; the message names the file.
    Long jobs skip it with a warning and count it. (What a reader finds unreadable while indexing it leaves
    out, with one warning each, and lists in its `skipped`.)"""


@dataclass
class EvalSequence:
    """One whole evaluation video and its ground truth, in the pixels of its own frames (every evaluation
    reader gives these). Coordinates are x then y, pixel centres at integers."""

    name: str
    frames: np.ndarray | list[Path]  # T,H,W,3 uint8 RGB in memory, or T image files read when needed
    image_hw: tuple[int, int]  # H,W of the frames
    trajs: np.ndarray  # T,N,2 float32, x,y pixels
    visibs: np.ndarray  # T,N float32, 1 = visible
    valids: np.ndarray  # T,N float32, 1 = where the metrics count; the points valid at frame 0 are queried

    @property
    def num_frames(self) -> int:
        return len(self.frames)
