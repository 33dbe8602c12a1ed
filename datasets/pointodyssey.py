"""PointOdyssey reader: sequence index, annotations of both schemas, training clips and full sequences.

On disk: <root>/<split>/<seq>/rgbs/rgb_%05d.jpg, masks/mask_%05d.png (instance ids, 0 = holes) and
either anno.npz (v1.2: trajs_2d T,N,2, visibs T,N, valids T,N) or annotations.npz (v1.0: trajs_2d,
visibilities T,N with 0 occluded / out of view, 1 visible, 2 invalid). The schema is read from the
keys present, not from the file name. Tracks are pixel x,y with pixel centres at integers.
"""

import logging
import re
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
from torch.utils.data import Dataset

from datasets.augment import augment_clip, just_crop, just_resize
from datasets.sample import ClipSample, EvalSequence, UnreadableMarks, UnreadableSequence
from utils.video import read_image

logger = logging.getLogger(__name__)

ANNO_FILES = ("anno.npz", "annotations.npz")  # v1.2 first, then v1.0
FRAME_NAME = re.compile(r"rgb_(\d{5})\.jpg")


@dataclass
class SequenceInfo:
    name: str
    path: Path
    anno_path: Path
    num_frames: int
    num_points: int
    has_masks: bool

    def rgb_path(self, t: int) -> Path:
        return self.path / "rgbs" / f"rgb_{t:05d}.jpg"

    def mask_path(self, t: int) -> Path:
        return self.path / "masks" / f"mask_{t:05d}.png"


@dataclass
class TrackAnnotations:
    """The ground-truth tracks of a sequence, as stored."""

    trajs: np.ndarray  # S,N,2 float32, x,y pixels
    visibs: np.ndarray  # S,N float32
    valids: np.ndarray  # S,N float32


def _npz_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Array shapes of an .npz from the member headers, without loading the arrays."""
    shapes = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for member in zf.namelist():
                with zf.open(member) as f:
                    version = np.lib.format.read_magic(f)
                    if version == (1, 0):
                        header = np.lib.format.read_array_header_1_0(f)
                    else:
                        header = np.lib.format.read_array_header_2_0(f)
                shapes[member.removesuffix(".npy")] = header[0]
    except (zipfile.BadZipFile, ValueError) as err:
        raise ValueError(f"{path}: not a readable .npz file ({err})") from err
    return shapes


def _annotation_keys(path: Path, keys: set[str]) -> tuple[str, str | None]:
    """(visibility key, valid key or None for v1.0) of an annotation file with these keys."""
    if "trajs_2d" in keys and {"visibs", "valids"} <= keys:
        return "visibs", "valids"
    if "trajs_2d" in keys and "visibilities" in keys:
        return "visibilities", None
    raise ValueError(
        f"{path}: needs trajs_2d with visibs+valids (v1.2) or visibilities (v1.0), has {sorted(keys)}"
    )


def _check_frames(seq_dir: Path, anno_path: Path, num_frames: int) -> None:
    rgb_dir = seq_dir / "rgbs"
    if not rgb_dir.is_dir():
        raise FileNotFoundError(f"sequence {seq_dir.name}: missing frame folder {rgb_dir}")
    matches = (FRAME_NAME.fullmatch(p.name) for p in rgb_dir.iterdir())
    found = {int(m.group(1)) for m in matches if m}
    expected = set(range(num_frames))
    if found != expected:
        missing = [f"rgb_{t:05d}.jpg" for t in sorted(expected - found)[:3]]
        extra = [f"rgb_{t:05d}.jpg" for t in sorted(found - expected)[:3]]
        detail = ", ".join(
            f"{kind} e.g. {names}" for kind, names in (("missing", missing), ("extra", extra)) if names
        )
        raise ValueError(
            f"sequence {seq_dir.name}: {anno_path.name} has {num_frames} frames but {rgb_dir} has "
            f"{len(found)} ({detail})"
        )


def _find_annotations(seq_dir: Path) -> Path | None:
    return next((seq_dir / f for f in ANNO_FILES if (seq_dir / f).is_file()), None)


def inspect_sequence(seq_dir: Path) -> SequenceInfo:
    """Checks one sequence folder (annotation schema and shapes, frames 0..T-1 all present) from file
    headers only. FileNotFoundError when it has no annotation file, ValueError when it is inconsistent."""
    seq_dir = Path(seq_dir)
    anno_path = _find_annotations(seq_dir)
    if anno_path is None:
        raise FileNotFoundError(f"sequence {seq_dir.name}: no {' or '.join(ANNO_FILES)} in {seq_dir}")
    shapes = _npz_shapes(anno_path)
    vis_key, val_key = _annotation_keys(anno_path, set(shapes))
    trajs_shape = shapes["trajs_2d"]
    if len(trajs_shape) != 3 or trajs_shape[2] != 2:
        raise ValueError(
            f"sequence {seq_dir.name}: {anno_path.name} trajs_2d must be T,N,2, got {trajs_shape}"
        )
    T, N = trajs_shape[:2]
    for key in (vis_key, val_key):
        if key is not None and shapes[key] != (T, N):
            raise ValueError(
                f"sequence {seq_dir.name}: {anno_path.name} {key} has shape {shapes[key]}, "
                f"trajs_2d {trajs_shape}"
            )
    _check_frames(seq_dir, anno_path, T)
    return SequenceInfo(seq_dir.name, seq_dir, anno_path, T, N, (seq_dir / "masks").is_dir())


class SplitIndex(NamedTuple):
    sequences: list[SequenceInfo]  # sorted by name
    skipped: list[str]  # one line per sequence left out, naming the file and the reason


def list_sequences(dataset_location: str | Path, dset: str) -> SplitIndex:
    """Sorted, checked sequences of a split. A sequence that cannot be read (no or corrupt annotations,
    frames missing) is skipped with one warning; ValueError when no sequence is left."""
    split_dir = Path(dataset_location) / dset
    if not split_dir.is_dir():
        raise FileNotFoundError(f"split folder {split_dir} does not exist")
    sequences, skipped = [], []
    for seq_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        try:
            sequences.append(inspect_sequence(seq_dir))
        except (OSError, ValueError) as err:
            logger.warning("skipping %s", err)
            skipped.append(str(err))
    if not sequences:
        detail = f" ({len(skipped)} skipped, e.g. {skipped[0]})" if skipped else ""
        raise ValueError(f"split folder {split_dir} has no readable sequence{detail}")
    return SplitIndex(sequences, skipped)


def load_tracks(seq: SequenceInfo, frame_ids: np.ndarray | None = None) -> TrackAnnotations:
    """Tracks of frames `frame_ids` (default all), float32, exactly as stored (non-finite kept).
    v1.0 visibilities v map to valids = (v < 2), visibs = (v == 1). UnreadableSequence when the file
    cannot be read."""
    try:
        with np.load(seq.anno_path, allow_pickle=True) as anno:
            vis_key, val_key = _annotation_keys(seq.anno_path, set(anno.files))
            ids = slice(None) if frame_ids is None else np.asarray(frame_ids)
            trajs = np.asarray(anno["trajs_2d"][ids], np.float32)  # S,N,2
            vis = np.asarray(anno[vis_key][ids], np.float32)  # S,N
            valids = None if val_key is None else np.asarray(anno[val_key][ids], np.float32)  # S,N
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as err:
        raise UnreadableSequence(f"cannot read {seq.anno_path} ({err})") from err
    if valids is None:
        return TrackAnnotations(trajs, (vis == 1).astype(np.float32), (vis < 2).astype(np.float32))
    return TrackAnnotations(trajs, vis, valids)


def _imread(path: Path, flags: int) -> np.ndarray:
    img = cv2.imread(str(path), flags)
    if img is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return img


def load_rgbs(paths: Sequence[Path], frame_ids: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """Reads the frames `paths[i]` for i in frame_ids (default all): S,H,W,3 uint8 RGB."""
    chosen = paths if frame_ids is None else [paths[int(i)] for i in frame_ids]
    return np.stack([read_image(p) for p in chosen])  # S,H,W,3


def invalidate_nonfinite(tracks: TrackAnnotations) -> TrackAnnotations:
    """Non-finite coordinates become 0 and their (t,n) entries invisible and invalid."""
    bad = ~np.isfinite(tracks.trajs).all(-1)  # S,N
    trajs = np.where(bad[..., None], 0, tracks.trajs).astype(np.float32)
    keep = (~bad).astype(np.float32)
    return TrackAnnotations(trajs, tracks.visibs * keep, tracks.valids * keep)


def outside(trajs: np.ndarray, lo: float, hi_x: float, hi_y: float) -> np.ndarray:
    """S,N bool: x < lo or x > hi_x or y < lo or y > hi_y."""
    x, y = trajs[..., 0], trajs[..., 1]
    return (x < lo) | (x > hi_x) | (y < lo) | (y > hi_y)


def fill_mask_holes(mask: np.ndarray) -> np.ndarray:
    """Fills the 0 pixels (fog/smoke holes) of an instance mask from a 7x7 median, when there are > 128."""
    holes = mask == 0
    if holes.sum() <= 128:
        return mask
    out = mask.copy()
    out[holes] = cv2.medianBlur(mask, 7)[holes]
    return out


def boundary_edges(mask: np.ndarray, dilate_iters: int) -> np.ndarray:
    """H,W uint8, nonzero near instance boundaries (Canny of the id map), excluding holes, dilated."""
    kernel = np.ones((3, 3), np.uint8)
    edges = cv2.Canny(mask, 1, 1)
    near_hole = cv2.dilate((mask == 0).astype(np.uint8), kernel, iterations=1)
    edges = edges * (1 - near_hole)
    return cv2.dilate(edges, kernel, iterations=dilate_iters)


def enough_visible(visibs: np.ndarray, valids: np.ndarray) -> np.ndarray:
    """N bool: visible and valid at frames 0 and 1, and in at least max(sqrt(S), 2) frames."""
    S = visibs.shape[0]
    vv = visibs * valids  # S,N
    return (vv[0] > 0) & (vv[1] > 0) & (vv.sum(0) >= max(np.sqrt(S), 2))


def motion_ok(trajs: np.ndarray, height: int, width: int) -> np.ndarray:
    """N bool: on trajs / max(H,W), max speed < 0.4, acceleration < 0.3 and jerk < 0.1 (L2 per step)."""
    x = trajs / max(height, width)  # S,N,2
    limits = {1: 0.4, 2: 0.3, 3: 0.1}
    keep = np.ones(trajs.shape[1], bool)
    for order, limit in limits.items():
        diff = np.linalg.norm(np.diff(x, n=order, axis=0), axis=-1)  # S-order,N
        keep &= diff.max(0, initial=0) < limit
    return keep


def farthest_point_sample(feats: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k distinct row indices of feats (P,D) by greedy farthest-point sampling from a random start."""
    P = len(feats)
    k = min(k, P)
    chosen = np.empty(k, np.int64)
    chosen[0] = rng.integers(P)
    dist = ((feats - feats[chosen[0]]) ** 2).sum(-1)  # P
    for i in range(1, k):
        chosen[i] = int(np.argmax(dist))
        dist = np.minimum(dist, ((feats - feats[chosen[i]]) ** 2).sum(-1))
    return chosen


class _Rejected(Exception):
    """A clip failed a filter; the reason is the message."""


class PointOdysseyDataset(Dataset):
    """Training clips of S frames with up to N points from PointOdyssey (v1.0 or v1.2).

    Item i of epoch e is a pure function of (seed, e, i). A clip failing a filter, or one of a sequence
    found unreadable, is replaced by a clip drawn from the item's generator; ValueError once no readable
    sequence is left.

    Args:
        dataset_location: the folder that holds the split folder `dset`.
        S, N: frames and points per clip.
        strides, clip_step: the index holds one clip per (sequence, stride, start) for start in
            range(0, T - S*stride + 1, clip_step).
        crop_size: H,W of every clip.
        use_augs: apply augment_clip; without it a clip is a random crop or a resize, evenly.
        req_full: require N points surviving every filter; False accepts N//2 and zero-pads the rest.
            The official loader names this the other way round and by default requires N.
        seed: with the epoch and the index, fixes an item's random draws.
        quick: index only the first sequence.
        max_tries: how many filtered clips in a row an item draws before RuntimeError.

    Attributes:
        skipped: the sequences left out at indexing.
        unreadable: the sequences one of whose files failed to read, marks shared by all DataLoader workers.
    """

    def __init__(
        self,
        dataset_location: str | Path,
        dset: str = "train",
        S: int = 8,
        N: int = 32,
        strides: tuple[int, ...] = (1, 2, 4),
        clip_step: int = 2,
        crop_size: tuple[int, int] = (368, 496),
        use_augs: bool = False,
        req_full: bool = False,
        seed: int = 0,
        quick: bool = False,
        max_tries: int = 20,
    ) -> None:
        if S < 2 or N < 1 or clip_step < 1 or max_tries < 1 or min(strides, default=0) < 1:
            raise ValueError(
                f"need S >= 2, N >= 1, clip_step >= 1, max_tries >= 1, strides >= 1; got S={S}, N={N}, "
                f"clip_step={clip_step}, max_tries={max_tries}, strides={strides}"
            )
        self.S, self.N, self.crop_size = S, N, tuple(crop_size)
        self.use_augs, self.seed, self.max_tries = use_augs, seed, max_tries
        self.min_points = N if req_full else max(N // 2, 1)
        self.epoch = 0
        self.split_dir = Path(dataset_location) / dset
        self.sequences, self.skipped = list_sequences(dataset_location, dset)
        self.sequences = self.sequences[: 1 if quick else None]
        self.unreadable = UnreadableMarks([seq.name for seq in self.sequences])
        for seq in self.sequences:
            if not seq.has_masks:
                logger.warning(
                    "sequence %s has no masks folder; its clips skip the boundary-edge filter", seq.name
                )
        clips = [
            (i, start, stride)
            for i, seq in enumerate(self.sequences)
            for stride in strides
            for start in range(0, seq.num_frames - S * stride + 1, clip_step)
        ]
        if not clips:
            raise ValueError(
                f"no sequence of {Path(dataset_location) / dset} is long enough for S={S}, strides={strides}"
            )
        self.clips = np.array(clips, np.int64)  # K,3 = sequence, start frame, stride

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> ClipSample:
        """A ClipSample at crop_size: rgbs S,H,W,3 uint8, trajs S,N,2 (x,y crop pixels), visibs/valids S,N."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} clips")
        rng = np.random.default_rng([self.seed, self.epoch, index])
        clip, reasons = index, []
        while len(reasons) < self.max_tries:  # only filtered clips count as tries
            seq_idx = int(self.clips[clip, 0])
            if self.unreadable.all_marked():
                bad = ", ".join(self.unreadable.found())
                raise ValueError(f"{self.split_dir}: no readable sequence left (unreadable: {bad})")
            try:
                # a clip reads all its files before its first random draw, so skipping a sequence known
                # to be unreadable leaves the generator as failing on it would
                if seq_idx not in self.unreadable:
                    return self._make_clip(clip, rng)
            except _Rejected as err:
                reasons.append(str(err))
                logger.debug("clip %d rejected: %s", clip, err)
            except (OSError, ValueError) as err:  # a file of the sequence cannot be read
                self.unreadable.mark(seq_idx, err)
            clip = int(rng.integers(len(self)))
        raise RuntimeError(
            f"item {index}: {self.max_tries} clips in a row failed the filters "
            f"(min {self.min_points} points); last reasons: {reasons[-3:]}"
        )

    def _require(self, keep: np.ndarray, stage: str, seq: SequenceInfo) -> None:
        if keep.sum() < self.min_points:
            raise _Rejected(f"{seq.name}: {int(keep.sum())} < {self.min_points} points {stage}")

    def _make_clip(self, clip: int, rng: np.random.Generator) -> ClipSample:
        seq_idx, start, stride = self.clips[clip]
        seq = self.sequences[seq_idx]
        frame_ids = start + np.arange(self.S) * stride  # S
        tracks = invalidate_nonfinite(load_tracks(seq, frame_ids))  # UnreadableSequence
        keep = tracks.visibs[0] * tracks.valids[0] > 0
        self._require(keep, "visible at frame 0", seq)
        trajs, visibs, valids = tracks.trajs[:, keep], tracks.visibs[:, keep], tracks.valids[:, keep]

        rgbs = load_rgbs([seq.rgb_path(int(t)) for t in frame_ids])  # S,H,W,3
        S, H, W, _ = rgbs.shape
        visibs[outside(trajs, 0, W - 1, H - 1)] = 0
        keep = visibs[0] > 0
        if seq.has_masks:
            mask = fill_mask_holes(_imread(seq.mask_path(int(frame_ids[0])), cv2.IMREAD_GRAYSCALE))
            edges = boundary_edges(mask, max(int(H / (self.crop_size[0] + 64)), 1))
            xi = np.clip(trajs[0, :, 0], 0, W - 1).astype(np.intp)
            yi = np.clip(trajs[0, :, 1], 0, H - 1).astype(np.intp)
            keep &= edges[yi, xi] == 0
        self._require(keep, "after the in-frame and boundary-edge checks", seq)
        trajs, visibs, valids = trajs[:, keep], visibs[:, keep], valids[:, keep]

        if self.use_augs:
            rgbs, trajs, visibs, valids = augment_clip(rgbs, trajs, visibs, valids, self.crop_size, rng)
        elif rng.random() < 0.5:
            rgbs, trajs = just_crop(rgbs, trajs, self.crop_size, rng)
        else:
            rgbs, trajs = just_resize(rgbs, trajs, self.crop_size)
        return self._finish(seq, rgbs, trajs, visibs.copy(), valids.copy(), rng)

    def _finish(
        self,
        seq: SequenceInfo,
        rgbs: np.ndarray,
        trajs: np.ndarray,
        visibs: np.ndarray,
        valids: np.ndarray,
        rng: np.random.Generator,
    ) -> ClipSample:
        """Post-crop rules, motion limits, farthest-point sampling and zero padding."""
        S, H, W, _ = rgbs.shape
        visibs[outside(trajs, 1, W - 2, H - 2)] = 0  # avoid the 1px border
        valids[outside(trajs, -64, W + 64, H + 64)] = 0
        keep = enough_visible(visibs, valids) & motion_ok(trajs, H, W)
        self._require(keep, "after cropping and the motion limits", seq)
        trajs, visibs, valids = trajs[:, keep], visibs[:, keep], valids[:, keep]

        vel = np.diff(trajs, axis=0).mean(0)  # N,2
        feats = np.concatenate([trajs[0], vel], -1)  # N,4 = x0, y0, mean dx, mean dy
        chosen = rng.permutation(farthest_point_sample(feats, self.N, rng))
        n = len(chosen)
        lo = np.array([-64, -64], np.float32)
        hi = np.array([W + 64, H + 64], np.float32)
        out_trajs = np.zeros((S, self.N, 2), np.float32)
        out_vis = np.zeros((S, self.N), np.float32)
        out_val = np.zeros((S, self.N), np.float32)
        out_trajs[:, :n] = np.clip(trajs[:, chosen], lo, hi)
        out_vis[:, :n], out_val[:, :n] = visibs[:, chosen], valids[:, chosen]
        return ClipSample(rgbs=rgbs, trajs=out_trajs, visibs=out_vis, valids=out_val)


class PointOdysseyFullSeq(Dataset):
    """Whole evaluation sequences, one item per sequence, frames left on disk.

    An item keeps at most N tracks. Sequences that cannot be indexed are left out and listed in `skipped`.
    """

    def __init__(self, dataset_location: str | Path, dset: str = "test", N: int = 256) -> None:
        if N < 1:
            raise ValueError(f"N must be >= 1, got {N}")
        self.N = N
        self.sequences, self.skipped = list_sequences(dataset_location, dset)

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, index: int) -> EvalSequence:
        """Sequence `index` with its tracks filtered for evaluation.

        Returns:
            An EvalSequence at the first frame's H,W. Coordinates outside [1, W-2] x [1, H-2] become
            invisible and invalid; kept are the tracks visible at frame 0, visible in >= 8 frames and
            moving < 512 px per frame, clamped to 32 px around the frame, N of them at linspace indices.
            A file of the sequence that fails to read raises UnreadableSequence, and a sequence with no
            track left raises ValueError.
        """
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} sequences")
        seq = self.sequences[index]
        paths = [seq.rgb_path(t) for t in range(seq.num_frames)]
        try:
            H, W = read_image(paths[0]).shape[:2]
        except (OSError, ValueError) as err:
            raise UnreadableSequence(f"sequence {seq.name}: {err}") from err
        tracks = invalidate_nonfinite(load_tracks(seq))  # UnreadableSequence
        trajs, visibs, valids = tracks.trajs, tracks.visibs, tracks.valids
        out = outside(trajs, 1, W - 2, H - 2)
        visibs[out] = 0
        valids[out] = 0
        vv = visibs * valids  # S,N
        step = np.linalg.norm(np.diff(trajs, axis=0), axis=-1).max(0, initial=0)  # N
        keep = (vv[0] > 0) & (vv.sum(0) >= 8) & (step < 512)
        if not keep.any():
            raise ValueError(
                f"sequence {seq.name}: no track of {seq.anno_path.name} passes the evaluation filters"
            )
        trajs = np.clip(trajs[:, keep], [-32, -32], [W + 32, H + 32]).astype(np.float32)
        n = trajs.shape[1]
        idx = np.linspace(0, n - 1, min(self.N, n)).astype(np.int32)
        return EvalSequence(
            name=seq.name,
            frames=paths,
            image_hw=(H, W),
            trajs=trajs[:, idx],
            visibs=visibs[:, keep][:, idx],
            valids=valids[:, keep][:, idx],
        )
