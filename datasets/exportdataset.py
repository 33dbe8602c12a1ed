"""Exported training clips: `<root>/<version>/<id:06d>/{rgb.mp4, track.npz}`.

`rgb.mp4` holds S RGB frames of H,W (H.264) and `track.npz` holds `track_g` S,N,4 float32 =
x, y, vis, valid in the pixel coordinates of those frames (integer = pixel centre; padding points
are all zero). `version` is `<tag>_<S>_<N>_<H>x<W>`, e.g. `ae_36_128_384x512`.

Writing is safe to interrupt and to share between processes: a clip is built in a hidden temporary
folder next to its final place and renamed into place, so a clip folder is complete or absent, and
a process claims a clip id first with a lock file created exclusively (O_CREAT|O_EXCL), so no clip
is written twice. Locks and temporary folders left by killed processes are recognised as stale
(owner process gone, or older than STALE_AFTER_S when written from another host) and replaced.
"""

import json
import logging
import os
import shutil
import socket
import time
import zipfile
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from datasets.augment import photometric_clip
from datasets.sample import ClipSample, UnreadableMarks, UnreadableSequence
from utils.video import read_frames, write_video

logger = logging.getLogger(__name__)

FPS = 24
CRF = 20  # x264 constant quality of the official export
LOCK_SUFFIX = ".lock"
TMP_PREFIX = ".tmp-"
STALE_AFTER_S = 600.0  # a lock or temporary folder from another host older than this is abandoned
EXPORT_CONFIG = "export_config.json"  # an export folder's record of its dataset and settings


def export_version(tag: str, S: int, N: int, crop_size: tuple[int, int]) -> str:
    """Folder name of an export, e.g. ('ae', 36, 128, (384, 512)) -> 'ae_36_128_384x512'."""
    return f"{tag}_{S}_{N}_{crop_size[0]}x{crop_size[1]}"


def export_settings(out_dir: Path) -> dict | None:
    """The settings an export folder records in its export_config.json (S, N, crop_size, ...), or None where
    the folder has no such file; ValueError naming the file when it cannot be read."""
    path = Path(out_dir) / EXPORT_CONFIG
    if not path.is_file():
        return None
    try:
        settings = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read {path}: {' '.join(str(err).split())}") from None
    if not isinstance(settings, dict):
        raise ValueError(f"{path} does not hold the settings of an export")
    return settings


def clip_dir(out_dir: Path, clip_id: int) -> Path:
    return Path(out_dir) / f"{clip_id:06d}"


def list_clips(out_dir: Path) -> list[Path]:
    """Complete clip folders of an export, sorted by id (temporary folders and locks are skipped)."""
    return sorted(p for p in Path(out_dir).iterdir() if p.name.isdigit() and p.is_dir())


def _owner() -> tuple[str, int]:
    return socket.gethostname(), os.getpid()


def _owner_alive(host: str, pid: int, mtime: float) -> bool:
    if host != socket.gethostname():
        return time.time() - mtime < STALE_AFTER_S
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return True  # no /proc to ask: trust kill()
    return state not in ("Z", "X")  # a killed process its parent has not reaped yet is gone


def _lock_alive(lock: Path) -> bool:
    try:
        text, mtime = lock.read_text(), lock.stat().st_mtime
    except FileNotFoundError:
        return False
    host, _, pid = text.strip().rpartition(" ")
    if not pid.isdigit():  # just created, owner not written yet
        return time.time() - mtime < STALE_AFTER_S
    return _owner_alive(host, int(pid), mtime)


def _lock_path(out_dir: Path, clip_id: int) -> Path:
    return Path(out_dir) / f"{clip_id:06d}{LOCK_SUFFIX}"


def _temp_dir(out_dir: Path, clip_id: int) -> Path:
    host, pid = _owner()
    return Path(out_dir) / f"{TMP_PREFIX}{clip_id:06d}-{host}-{pid}"


def _remove_abandoned_temps(out_dir: Path, clip_id: int) -> None:
    for tmp in Path(out_dir).glob(f"{TMP_PREFIX}{clip_id:06d}-*"):
        owner = tmp.name[len(TMP_PREFIX) :].partition("-")[2]  # <host>-<pid>
        host, _, pid = owner.rpartition("-")
        try:
            mtime = tmp.stat().st_mtime
        except FileNotFoundError:
            continue
        if not pid.isdigit() or not _owner_alive(host, int(pid), mtime):
            shutil.rmtree(tmp, ignore_errors=True)


def claim_clip(out_dir: Path, clip_id: int) -> bool:
    """Take the lock of one clip id; False if a live process holds it. A stale lock is replaced,
    and temporary folders its dead owner left for this id are removed."""
    lock = _lock_path(out_dir, clip_id)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if _lock_alive(lock):
                return False
            lock.unlink(missing_ok=True)
            continue
        host, pid = _owner()
        with os.fdopen(fd, "w") as f:
            f.write(f"{host} {pid}\n")
        _remove_abandoned_temps(out_dir, clip_id)
        return True
    return False


def remove_stale_lock(out_dir: Path, clip_id: int) -> None:
    """Remove the lock of a clip whose owner is gone, e.g. killed between writing the clip and releasing
    its lock; a live owner's lock stays."""
    lock = _lock_path(out_dir, clip_id)
    if lock.exists() and not _lock_alive(lock):
        lock.unlink(missing_ok=True)


def release_clip(out_dir: Path, clip_id: int) -> None:
    _lock_path(out_dir, clip_id).unlink(missing_ok=True)


def write_clip(out_dir: Path, clip_id: int, sample: ClipSample) -> bool:
    """Write one clip atomically; False if another process put a complete clip there first."""
    final, tmp = clip_dir(out_dir, clip_id), _temp_dir(out_dir, clip_id)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write_video(tmp / "rgb.mp4", sample.rgbs, fps=FPS, crf=CRF)
        np.savez_compressed(tmp / "track.npz", track_g=sample.track_g)
        try:
            os.rename(tmp, final)
        except OSError:
            if final.is_dir():
                return False
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing left there after a successful rename
    return True


def _read_track(clip: Path) -> np.ndarray:
    try:
        with np.load(clip / "track.npz") as data:
            return np.asarray(data["track_g"], dtype=np.float32)  # S,N,4
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise UnreadableSequence(f"unreadable {clip / 'track.npz'}: {err}") from err


def _read_rgbs(clip: Path, S: int) -> np.ndarray:
    try:
        rgbs = read_frames(clip / "rgb.mp4", max_frames=S)  # T,H,W,3 RGB
    except (OSError, ValueError) as err:
        raise UnreadableSequence(f"unreadable {clip / 'rgb.mp4'}: {err}") from err
    if len(rgbs) < S:
        raise UnreadableSequence(f"short {clip / 'rgb.mp4'}: {len(rgbs)} frames, expected {S}")
    return rgbs


def _index_clips(root: Path) -> tuple[list[Path], list[str]]:
    """(complete clip folders, one line per folder left out because a file is missing)."""
    clips, skipped = [], []
    for clip in list_clips(root):
        missing = [name for name in ("rgb.mp4", "track.npz") if not (clip / name).is_file()]
        if missing:
            skipped.append(f"clip {clip}: no {' or '.join(missing)}")
            logger.warning("skipping %s", skipped[-1])
        else:
            clips.append(clip)
    return clips, skipped


class ExportDataset(Dataset):
    """Clips written by export_mp4_dataset.py, in sorted id order.

    Each item is a ClipSample with rgbs S,H,W,3 uint8 RGB and a random subset (without replacement) of N
    of the clip's points, a pure function of (seed, epoch, index). A clip that cannot be read (corrupted or
    short mp4, broken npz) is replaced by another, with one warning; ValueError once no clip is readable.

    Args:
        dataset_location: the folder that holds the export folder `version`.
        version: the export's folder name, `<tag>_<S>_<N>_<H>x<W>`.
        S, N, crop_size: what every clip must hold; a clip of another S, N or size raises ValueError.
        use_augs: apply the photometric augmentation, with the same parameters on all frames.
        seed: with the epoch and the index, fixes an item's random draws.

    Attributes:
        skipped: the clip folders missing a file, left out at indexing.
        unreadable: the clips found unreadable, marks shared by all DataLoader workers.
    """

    def __init__(
        self,
        dataset_location: str = "./pod_export",
        version: str = "ae_36_128_384x512",
        S: int = 36,
        N: int = 128,
        crop_size: tuple[int, int] = (384, 512),
        use_augs: bool = False,
        seed: int = 0,
    ) -> None:
        self.root = Path(dataset_location) / version
        if not self.root.is_dir():
            raise FileNotFoundError(f"no export folder {self.root}; write one with export_mp4_dataset.py")
        self.clips, self.skipped = _index_clips(self.root)
        if not self.clips:
            raise FileNotFoundError(f"export folder {self.root} holds no complete clips")
        self.S, self.N, self.crop_size = S, N, (int(crop_size[0]), int(crop_size[1]))
        self.use_augs, self.seed, self.epoch = use_augs, seed, 0
        self.unreadable = UnreadableMarks([clip.name for clip in self.clips])
        self._check_shapes()

    def _check_shapes(self) -> None:
        # fail at construction, not inside a DataLoader worker, when S, N or crop_size do not match
        for index in range(len(self.clips)):
            try:
                self._load(self.clips[index], np.random.default_rng(0), augment=False)
                return
            except UnreadableSequence as err:
                self.unreadable.mark(index, err)
        raise ValueError(f"export folder {self.root}: no clip can be read")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def select(self, part: slice) -> None:
        """Keep only the clips `part` of the index (say, a held-out split)."""
        self.clips, self.unreadable = self.clips[part], self.unreadable[part]

    def __len__(self) -> int:
        return len(self.clips)

    def _load(self, clip: Path, rng: np.random.Generator, augment: bool) -> ClipSample:
        track = _read_track(clip)  # S,N',4
        if track.ndim != 3 or track.shape[0] != self.S or track.shape[2] != 4:
            raise ValueError(f"clip {clip}: track_g has shape {track.shape}, expected ({self.S}, N, 4)")
        if track.shape[1] < self.N:
            raise ValueError(f"clip {clip} has {track.shape[1]} points, fewer than N={self.N}")
        rgbs = _read_rgbs(clip, self.S)  # S,H,W,3
        if rgbs.shape[1:3] != self.crop_size:
            raise ValueError(f"clip {clip}: frames are {rgbs.shape[1:3]}, expected {self.crop_size}")
        track = track[:, rng.permutation(track.shape[1])[: self.N]]  # S,N,4
        if augment:
            rgbs = photometric_clip(rgbs, rng)
        return ClipSample(
            rgbs=rgbs,  # S,H,W,3
            trajs=np.ascontiguousarray(track[..., :2]),  # S,N,2
            visibs=np.ascontiguousarray(track[..., 2]),  # S,N
            valids=np.ascontiguousarray(track[..., 3]),  # S,N
        )

    def __getitem__(self, index: int) -> ClipSample:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        while not self.unreadable.all_marked():
            # a clip is read before the first random draw, so skipping one known to be unreadable leaves the
            # generator as failing on it would
            if index not in self.unreadable:
                try:
                    return self._load(self.clips[index], rng, self.use_augs)
                except UnreadableSequence as err:
                    self.unreadable.mark(index, err)
            index = int(rng.integers(len(self.clips)))
        raise ValueError(f"export folder {self.root}: no readable clip left")
