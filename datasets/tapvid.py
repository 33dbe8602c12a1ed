"""TAP-Vid-DAVIS reader: `<dataset_location>/tapvid_davis.pkl`, a pickled dict
name -> {'video': T,H,W,3 uint8 RGB, 'points': N,T,2 float x,y normalised to [0,1], 'occluded': N,T bool}
(a list of such dicts is accepted too; its videos are named by index)."""

import logging
import pickle
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from datasets.sample import EvalSequence

logger = logging.getLogger(__name__)

PICKLE_NAME = "tapvid_davis.pkl"


def _check_entry(name: str, entry: object, path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not isinstance(entry, dict) or not {"video", "points", "occluded"} <= set(entry):
        raise ValueError(f"{path}: video {name!r} needs the keys 'video', 'points' and 'occluded'")
    video = np.asarray(entry["video"])
    points = np.asarray(entry["points"], dtype=np.float32)
    occluded = np.asarray(entry["occluded"], dtype=bool)
    if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
        raise ValueError(f"{path}: video {name!r} must be T,H,W,3 uint8, got {video.shape} {video.dtype}")
    T = video.shape[0]
    if points.ndim != 3 or points.shape[1:] != (T, 2) or occluded.shape != points.shape[:2]:
        raise ValueError(
            f"{path}: video {name!r} needs points N,{T},2 and occluded N,{T}, got {points.shape} "
            f"and {occluded.shape}"
        )
    return video, points, occluded


class TapVidDavis(Dataset):
    """One item per video, in the pickle's order; frames stay as loaded (full resolution). Videos whose
    entry is malformed are left out with one warning each and listed in `skipped`."""

    def __init__(self, dataset_location: str | Path) -> None:
        self.path = Path(dataset_location) / PICKLE_NAME
        if not self.path.is_file():
            raise FileNotFoundError(f"TAP-Vid-DAVIS pickle not found: {self.path}")
        try:
            with open(self.path, "rb") as f:
                data = pickle.load(f)
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError) as err:
            raise ValueError(f"cannot read {self.path}: truncated or not a pickle ({err})") from None
        if isinstance(data, dict):
            names, entries = [str(k) for k in data], list(data.values())
        elif isinstance(data, list):
            names, entries = [f"{i:03d}" for i in range(len(data))], data
        else:
            raise ValueError(f"{self.path} holds a {type(data).__name__}, expected a dict of videos")
        self.names, self.entries, self.skipped = [], [], []
        for name, entry in zip(names, entries):
            try:
                _check_entry(name, entry, self.path)
            except ValueError as err:
                logger.warning("skipping %s", err)
                self.skipped.append(str(err))
                continue
            self.names.append(name)
            self.entries.append(entry)
        if not self.entries:
            raise ValueError(f"{self.path}: no readable video ({len(self.skipped)} skipped)")

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> EvalSequence:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} videos")
        name = self.names[index]
        video, points, occluded = _check_entry(name, self.entries[index], self.path)
        H, W = video.shape[1:3]
        trajs = points.transpose(1, 0, 2) * np.array([W - 1, H - 1], np.float32)  # T,N,2
        visibs = (~occluded).T.astype(np.float32)  # T,N
        # TAP-Vid annotates the positions of visible points only: they are where the metrics count
        return EvalSequence(name, video, (H, W), trajs.astype(np.float32), visibs, visibs.copy())
