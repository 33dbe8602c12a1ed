"""CroHD (HT21 head tracking) reader for long-range point-tracking evaluation.

Layout: `<dataset_location>/HT21/train/HT21-0x/img1/%06d.jpg` (1-based frame numbers) and
`.../gt/gt.txt`, CSV rows `frame, id, left, top, width, height, conf, class, visibility` (frame and id
1-based). Each sequence is cut into clips of up to S frames starting every S//2 frames; clips shorter
than S_min are dropped. A clip's tracks are the head-box centres.
"""

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from datasets.sample import EvalSequence, UnreadableSequence
from utils.video import read_image

logger = logging.getLogger(__name__)

BORDER = 32  # px; the annotations get noisy near the image border, so centres this close are not scored
MIN_PATH_LENGTH = 150.0  # px; heads whose centre travels less over the clip are dropped


@dataclass
class HeadLabels:
    """The rows of one gt.txt, 0-based."""

    frames: np.ndarray  # R int64
    ids: np.ndarray  # R int64
    boxes: np.ndarray  # R,4 float64 x1,y1,x2,y2
    vis: np.ndarray  # R float64

    @property
    def num_frames(self) -> int:
        return int(self.frames.max()) + 1


def read_labels(path: str | Path) -> HeadLabels:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CroHD labels not found: {path}")
    try:
        rows = np.loadtxt(path, delimiter=",", ndmin=2)
    except ValueError as err:  # not numbers, ragged rows, not text
        raise ValueError(f"{path}: cannot read the labels ({err})") from None
    if rows.shape[0] == 0 or rows.shape[1] < 9:
        raise ValueError(f"{path}: expected rows of 9 comma-separated values, got shape {rows.shape}")
    frames = rows[:, 0].astype(np.int64) - 1
    ids = rows[:, 1].astype(np.int64) - 1
    if frames.min() < 0 or ids.min() < 0:
        raise ValueError(f"{path}: frame numbers and ids must start at 1")
    left, top, width, height = rows[:, 2:6].T
    boxes = np.stack([left, top, left + width, top + height], axis=-1)  # R,4
    return HeadLabels(frames=frames, ids=ids, boxes=boxes, vis=rows[:, 8])


def frame_path(seq_dir: Path, t: int) -> Path:
    """Image of 0-based frame t."""
    return seq_dir / "img1" / f"{t + 1:06d}.jpg"


def head_tracks(
    labels: HeadLabels, start: int, end: int, height: int, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Box centres, visibility and validity of every head labelled in frames [start, end), ordered by
    id -> trajs T,N,2, visibs T,N, valids T,N (float32). Unlabelled frames have the centre (0, 0);
    centres within BORDER px of the image border are neither visible nor valid."""
    rows = (labels.frames >= start) & (labels.frames < end)
    heads, column = np.unique(labels.ids[rows], return_inverse=True)  # N, R'
    T, N = end - start, len(heads)
    boxes = np.zeros((T, N, 4))  # T,N,4
    labelled = np.zeros((T, N), bool)
    vis = np.zeros((T, N))
    t = labels.frames[rows] - start
    boxes[t, column] = labels.boxes[rows]
    labelled[t, column] = True
    vis[t, column] = labels.vis[rows]
    trajs = np.stack([boxes[..., [0, 2]].mean(-1), boxes[..., [1, 3]].mean(-1)], axis=-1)  # T,N,2
    x, y = trajs[..., 0], trajs[..., 1]
    inside = (x >= BORDER) & (x <= width - BORDER) & (y >= BORDER) & (y <= height - BORDER)
    visibs = (vis > 0) & inside
    valids = labelled & inside
    return trajs.astype(np.float32), visibs.astype(np.float32), valids.astype(np.float32)


def select_heads(trajs: np.ndarray, visibs: np.ndarray, valids: np.ndarray) -> np.ndarray:
    """N bool: heads visible and valid at frames 0 and 1 whose centre path is longer than
    MIN_PATH_LENGTH. As official, the path includes the jumps to (0, 0) of unlabelled frames."""
    path_length = np.linalg.norm(np.diff(trajs, axis=0), axis=-1).sum(0)  # N
    ok = (visibs[0] > 0) & (visibs[1] > 0) & (valids[0] > 0) & (valids[1] > 0)
    return ok & (path_length > MIN_PATH_LENGTH)


def hold_while_occluded(trajs: np.ndarray, visibs: np.ndarray) -> np.ndarray:
    """trajs T,N,2 with each frame t >= 1 where the head is not visible replaced by the last visible
    position before it (the last earlier frame whose original position was visible)."""
    T = trajs.shape[0]
    frame = np.where(visibs > 0, np.arange(T)[:, None], 0)  # T,N
    last = np.maximum.accumulate(frame, axis=0)  # T,N
    return np.take_along_axis(trajs, last[..., None], axis=0)  # T,N,2


class CroHD(Dataset):
    """Clips of the HT21 training sequences, one item per clip; images are left on disk.

    A clip whose first image cannot be read raises UnreadableSequence.

    Args:
        dataset_location: the folder that holds HT21/train.
        S: the longest clip, in frames; a clip starts every S//2 frames.
        S_min: clips shorter than this are dropped.
        hold_occluded: replace the gt of every frame where a head is not visible by its previous
            position, as the official reader does. Labelled heads that are occluded keep valids = 1, so
            the published CroHD numbers score those frames against the held position: keep it True to
            reproduce them.

    Attributes:
        skipped: the sequences left out, with one warning each, because their labels cannot be read or
            their img1/ folder is missing.
    """

    def __init__(
        self, dataset_location: str | Path, S: int = 1000, S_min: int = 128, hold_occluded: bool = True
    ) -> None:
        if S < 2 or not 2 <= S_min <= S:
            raise ValueError(f"need 2 <= S_min <= S, got S={S}, S_min={S_min}")
        root = Path(dataset_location) / "HT21" / "train"
        if not root.is_dir():
            raise FileNotFoundError(
                f"CroHD folder not found: {root} (expected <dataset_location>/HT21/train)"
            )
        self.hold_occluded = hold_occluded
        folders = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("HT21-"))
        if not folders:
            raise FileNotFoundError(f"no HT21-* sequence folders in {root}")
        self.sequences, self.labels, self.skipped = [], {}, []
        for seq in folders:
            try:
                if not (seq / "img1").is_dir():
                    raise FileNotFoundError(f"CroHD frames not found: {seq / 'img1'}")
                self.labels[seq.name] = read_labels(seq / "gt" / "gt.txt")
            except (OSError, ValueError) as err:
                logger.warning("skipping %s", err)
                self.skipped.append(str(err))
                continue
            self.sequences.append(seq)
        if not self.sequences:
            raise ValueError(f"no readable CroHD sequence in {root} ({len(self.skipped)} skipped)")
        self.clips: list[tuple[Path, int, int]] = []
        for seq in self.sequences:
            num_frames = self.labels[seq.name].num_frames
            for start in range(0, num_frames, S // 2):
                end = min(start + S, num_frames)
                if end - start >= S_min:
                    self.clips.append((seq, start, end))

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> EvalSequence:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} clips")
        seq, start, end = self.clips[index]
        first = frame_path(seq, start)
        try:
            H, W = read_image(first).shape[:2]
        except (OSError, ValueError) as err:
            raise UnreadableSequence(f"clip {seq.name} {start}-{end}: {err}") from err
        trajs, visibs, valids = head_tracks(self.labels[seq.name], start, end, H, W)
        keep = select_heads(trajs, visibs, valids)
        trajs, visibs, valids = trajs[:, keep], visibs[:, keep], valids[:, keep]
        if self.hold_occluded:
            trajs = hold_while_occluded(trajs, visibs)
        return EvalSequence(
            name=f"{seq.name}_{start:06d}_{end:06d}",
            frames=[frame_path(seq, t) for t in range(start, end)],
            image_hw=(H, W),
            trajs=trajs,
            visibs=visibs,
            valids=valids,
        )
