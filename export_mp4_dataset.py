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
    claim_clip,
    clip_dir,
    export_version,
    list_clips,
    release_clip,
    remove_stale_lock,
    write_clip,
)
from datasets.pointodyssey import PointOdysseyDataset
from utils.cli import explain_flags, run

CONFIG_FILE = "export_config.json"


@dataclass(frozen=True)
class ExportConfig:
    dataset_location: str
    dset: str
    S: int
    N: int
    crop_size: tuple[int, int]
    use_augs: bool
    seed: int


@lru_cache(maxsize=1)
def _dataset(config: ExportConfig) -> PointOdysseyDataset:
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
    config: ExportConfig
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
    path = out_dir / CONFIG_FILE
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
            f"{out_dir} holds clips but no {CONFIG_FILE} saying what they are; use another folder"
        )
    tmp = out_dir / f"{CONFIG_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(settings, indent=1))
    os.replace(tmp, path)


def _parse_crop(crop_size: tuple[int, int] | list[int] | str) -> tuple[int, int]:
    values = crop_size.split(",") if isinstance(crop_size, str) else list(crop_size)
    if len(values) != 2 or any(int(v) <= 0 or int(v) % 2 for v in values):
        raise ValueError(f"crop_size must be two positive even numbers H,W; got {crop_size!r}")
    return int(values[0]), int(values[1])


@explain_flags
def main(
    *,
    dataset_location: str = "data/pointodyssey",  # PointOdyssey root holding <dset>/<sequence>/
    dset: str = "train",  # split to export
    S: int = 36,  # frames per clip
    N: int = 128,  # points per clip
    crop_size: tuple[int, int] = (384, 512),  # H,W of the exported frames (even numbers)
    version: str = "ae",  # tag of the export folder name <version>_<S>_<N>_<H>x<W>
    max_clips: int = 0,  # export items 0..max_clips-1 of the dataset; 0 = all
    num_workers: int = 1,  # worker processes
    use_augs: bool = True,  # training augmentations (photometric, occluders, reversal, zoom/crop/flips)
    out_root: str = "./pod_export",  # parent folder of the export folder
    seed: int = 0,  # dataset seed: clip i is a pure function of (seed, i)
) -> None:
    if S < 2 or N < 1:
        raise ValueError(f"need S >= 2 and N >= 1, got S={S}, N={N}")
    crop = _parse_crop(crop_size)
    config = ExportConfig(str(Path(dataset_location).resolve()), dset, S, N, crop, bool(use_augs), seed)
    dataset = _dataset(config)  # before any folder is made: a wrong --dataset_location leaves nothing behind
    settings = {
        **asdict(config),
        "crop_size": list(crop),
        "sequences": [seq.name for seq in dataset.sequences],
    }
    out_dir = Path(out_root) / export_version(version, S, N, crop)
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_config(out_dir, settings)
    ids = range(min(max_clips, len(dataset)) if max_clips > 0 else len(dataset))
    exporter = ClipExporter(config, out_dir)

    counts, reasons, unreadable = Counter(written=0, skipped=0, failed=0), Counter(), set()
    with ExitStack() as stack:
        if num_workers > 1:
            pool = stack.enter_context(mp.get_context("spawn").Pool(num_workers))
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
    run(main)
