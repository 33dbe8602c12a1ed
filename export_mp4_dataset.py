"""Export PointOdyssey training clips as `<out_root>/<version>_<S>_<N>_<H>x<W>/<id:06d>/{rgb.mp4, track.npz}`.

Clip i is item i of PointOdysseyDataset (a pure function of --seed), so a run can be interrupted and
rerun: complete clips are skipped. Several exporters (and --num_workers worker processes) may share one
output folder; each clip id is claimed with a lock file and written atomically. The folder's
export_config.json records the dataset, its readable sequences and the settings, which hold for every clip
in it: an export from another dataset or with other settings is refused, never mixed in. A sequence that
cannot be read is skipped with a warning (its clips replaced by others) and counted in the summary.

    python export_mp4_dataset.py --dataset_location data/pointodyssey --S 36 --N 128 --crop_size 384,512
"""

import json
import multiprocessing as mp
import os
import re
from collections import Counter
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

from tqdm import tqdm

from datasets.exportdataset import (
    EXPORT_CONFIG,
    claim_clip,
    clip_dir,
    export_version,
    list_clips,
    release_clip,
    remove_stale_lock,
    write_clip,
)
from datasets.pointodyssey import PointOdysseyDataset
from utils.config import knob, require, run


@dataclass(frozen=True)
class ExportConfig:
    dataset_location: str = knob("data/pointodyssey", "PointOdyssey root holding <dset>/<sequence>/")
    dset: str = knob("train", "split to export")
    S: int = knob(36, "frames per clip")
    N: int = knob(128, "points per clip")
    crop_size: tuple[int, int] = knob((384, 512), "H,W of the exported frames (even numbers)")
    version: str = knob("ae", "tag of the export folder name <version>_<S>_<N>_<H>x<W>")
    max_clips: int = knob(0, "export items 0..max_clips-1 of the dataset; 0 = all")
    num_workers: int = knob(1, "worker processes")
    use_augs: bool = knob(True, "training augmentations (photometric, occluders, reversal, zoom/crop/flips)")
    out_root: str = knob("./pod_export", "parent folder of the export folder")
    seed: int = knob(0, "dataset seed: clip i is a pure function of (seed, i)")

    def __post_init__(self) -> None:
        require(self.S >= 2, "S", "at least 2", self.S)
        require(self.N >= 1, "N", "at least 1", self.N)
        H, W = self.crop_size
        require(
            H > 0 and W > 0 and H % 2 == W % 2 == 0,
            "crop_size",
            "two positive even numbers H,W",
            self.crop_size,
        )
        require(self.max_clips >= 0, "max_clips", "0 or more", self.max_clips)
        require(self.num_workers >= 1, "num_workers", "at least 1", self.num_workers)


@dataclass(frozen=True)
class ClipSettings:
    """What every clip of an export is made with (recorded in export_config.json)."""

    dataset_location: str  # absolute
    dset: str
    S: int
    N: int
    crop_size: tuple[int, int]
    use_augs: bool
    seed: int


@lru_cache(maxsize=1)
def _dataset(config: ClipSettings) -> PointOdysseyDataset:
    # built once per process: the exporter below is pickled to worker processes with every task
    return PointOdysseyDataset(
        config.dataset_location,
        dset=config.dset,
        S=config.S,
        N=config.N,
        crop_size=config.crop_size,
        use_augs=config.use_augs,
        seed=config.seed,
    )


class ClipResult(NamedTuple):
    status: str  # written, skipped (already there) or failed
    reason: str  # why it failed
    unreadable: tuple[str, ...]  # sequences this process has found unreadable so far


@dataclass(frozen=True)
class ClipExporter:
    config: ClipSettings
    out_dir: Path

    def __call__(self, clip_id: int) -> ClipResult:
        """Export one clip."""
        status, reason = self._export(clip_id)
        return ClipResult(status, reason, tuple(_dataset(self.config).unreadable.found()))

    def _export(self, clip_id: int) -> tuple[str, str]:
        if clip_dir(self.out_dir, clip_id).is_dir():
            remove_stale_lock(self.out_dir, clip_id)  # its writer may have died before releasing it
            return "skipped", ""
        if not claim_clip(self.out_dir, clip_id):
            return "skipped", ""
        try:
            if clip_dir(self.out_dir, clip_id).is_dir():  # finished elsewhere since the first look
                return "skipped", ""
            sample = _dataset(self.config)[clip_id]
            if sample.valids.sum() < self.config.S * self.config.N // 2:
                return "failed", "too few valid points (sum of valids < S*N/2)"
            return ("written" if write_clip(self.out_dir, clip_id, sample) else "skipped"), ""
        except Exception as err:  # one bad clip is counted and reported, not fatal to the export
            return "failed", _reason(err)
        finally:
            release_clip(self.out_dir, clip_id)


def _reason(err: Exception) -> str:
    """First line of the error with numbers masked, so that clips failing alike are counted together."""
    lines = str(err).splitlines()
    return re.sub(r"\d+", "#", f"{type(err).__name__}: {lines[0] if lines else ''}")[:160]


def _describe(key: str, value: object) -> str:
    if isinstance(value, list) and len(value) > 4:
        return f"{len(value)} {key} ({', '.join(map(str, value[:3]))}, ...)"
    return f"{key} {value}"


def _check_config(out_dir: Path, settings: dict) -> None:
    """Refuse to mix clips of another dataset or other settings into a folder; record them in a new one."""
    path = out_dir / EXPORT_CONFIG
    if path.exists():
        try:
            previous = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ValueError(
                f"cannot read {path} ({err}); export into another --version or --out_root"
            ) from None
        changed = [k for k in settings if previous.get(k) != settings[k]]
        if changed:
            differences = "; ".join(
                f"{_describe(k, previous.get(k))} there, {_describe(k, settings[k])} now" for k in changed
            )
            raise ValueError(
                f"{out_dir} holds clips of another export ({differences}); "
                "use another --version or --out_root"
            )
        return
    if list_clips(out_dir):
        raise ValueError(
            f"{out_dir} holds clips but no {EXPORT_CONFIG} saying what they are; use another folder"
        )
    tmp = out_dir / f"{EXPORT_CONFIG}.{os.getpid()}"
    tmp.write_text(json.dumps(settings, indent=1))
    os.replace(tmp, path)


def main(cfg: ExportConfig) -> None:
    location = str(Path(cfg.dataset_location).resolve())
    config = ClipSettings(location, cfg.dset, cfg.S, cfg.N, cfg.crop_size, cfg.use_augs, cfg.seed)
    dataset = _dataset(config)  # before any folder is made: a wrong --dataset_location leaves nothing behind
    settings = {
        **asdict(config),
        "crop_size": list(cfg.crop_size),
        "sequences": [seq.name for seq in dataset.sequences],
    }
    out_dir = Path(cfg.out_root) / export_version(cfg.version, cfg.S, cfg.N, cfg.crop_size)
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_config(out_dir, settings)
    ids = range(min(cfg.max_clips, len(dataset)) if cfg.max_clips > 0 else len(dataset))
    exporter = ClipExporter(config, out_dir)

    counts, reasons, unreadable = Counter(written=0, skipped=0, failed=0), Counter(), set()
    with ExitStack() as stack:
        if cfg.num_workers > 1:
            pool = stack.enter_context(mp.get_context("spawn").Pool(cfg.num_workers))
            results = pool.imap_unordered(exporter, ids)
        else:
            results = map(exporter, ids)
        bar = stack.enter_context(tqdm(results, total=len(ids), desc=f"export {out_dir.name}", unit="clip"))
        for result in bar:
            counts[result.status] += 1
            if result.status == "failed":
                reasons[result.reason] += 1
            unreadable.update(result.unreadable)
            bar.set_postfix(counts, refresh=False)

    print(f"{out_dir}: written {counts['written']}, skipped {counts['skipped']}, failed {counts['failed']}")
    for reason, count in reasons.most_common():
        print(f"  failed {count:6d}: {reason}")
    bad = dataset.skipped + [f"{name}: failed to read (see its warning)" for name in sorted(unreadable)]
    print(f"unreadable sequences skipped: {len(bad)}" + "".join(f"\n  {line}" for line in bad))


if __name__ == "__main__":
    run(main, ExportConfig)
