"""Export PointOdyssey training clips as `<out_root>/<version>_<S>_<N>_<H>x<W>/<id:06d>/{rgb.mp4, track.npz}`.

Clip i is item i of PointOdysseyDataset (a pure function of --seed), so a run can be interrupted and
rerun: complete clips are skipped. Several exporters (and --num_workers worker processes) may share one
output folder; each clip id is claimed with a lock file and written atomically.

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

from tqdm import tqdm

from datasets.exportdataset import claim_clip, clip_dir, export_version, release_clip, write_clip
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


@dataclass(frozen=True)
class ClipExporter:
    config: ExportConfig
    out_dir: Path

    def __call__(self, clip_id: int) -> tuple[str, str]:
        """Export one clip; returns (status, failure reason) with status written/skipped/failed."""
        if clip_dir(self.out_dir, clip_id).is_dir() or not claim_clip(self.out_dir, clip_id):
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


def _check_config(out_dir: Path, config: ExportConfig) -> None:
    """Refuse to mix clips of different settings in one folder; record the settings otherwise."""
    path = out_dir / CONFIG_FILE
    settings = asdict(config)
    settings["crop_size"] = list(config.crop_size)
    if path.exists():
        previous = json.loads(path.read_text())
        changed = sorted(k for k in settings if k != "dataset_location" and previous.get(k) != settings[k])
        if changed:
            raise ValueError(
                f"{out_dir} was exported with other settings ({', '.join(changed)}: {previous}); "
                "use another --version or --out_root"
            )
        return
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
    config = ExportConfig(str(dataset_location), dset, S, N, crop, bool(use_augs), seed)
    out_dir = Path(out_root) / export_version(version, S, N, crop)
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_config(out_dir, config)
    total = len(_dataset(config))
    ids = range(min(max_clips, total) if max_clips > 0 else total)
    exporter = ClipExporter(config, out_dir)

    counts, reasons = Counter(written=0, skipped=0, failed=0), Counter()
    with ExitStack() as stack:
        if num_workers > 1:
            pool = stack.enter_context(mp.get_context("spawn").Pool(num_workers))
            results = pool.imap_unordered(exporter, ids)
        else:
            results = map(exporter, ids)
        bar = stack.enter_context(tqdm(results, total=len(ids), desc=f"export {out_dir.name}", unit="clip"))
        for status, reason in bar:
            counts[status] += 1
            if status == "failed":
                reasons[reason] += 1
            bar.set_postfix(counts, refresh=False)

    print(f"{out_dir}: written {counts['written']}, skipped {counts['skipped']}, failed {counts['failed']}")
    for reason, count in reasons.most_common():
        print(f"  failed {count:6d}: {reason}")


if __name__ == "__main__":
    run(main)
