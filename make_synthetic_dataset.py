"""Writes procedural scenes with exact tracks in the PointOdyssey layout:
<out>/<split>/<seq>/{rgbs/rgb_%05d.jpg, masks/mask_%05d.png, anno.npz, info.npz} (v1.2) or
annotations.npz (v1.0). Every scene is a pure function of (seed, split name, sequence index)."""

import zlib
from pathlib import Path

import numpy as np
from tqdm import tqdm

from datasets.synthetic import make_scene, write_sequence
from utils.cli import explain_flags, run


@explain_flags
def main(
    *,
    out: str = "data/synth_pod",  # dataset root to write
    splits: str | tuple[str, ...] = "train,val,test",  # comma-separated split names
    num_sequences: int = 4,  # sequences per split
    num_frames: int = 64,  # frames per sequence
    height: int = 540,  # frame height in pixels
    width: int = 960,  # frame width in pixels
    num_points: int = 4096,  # tracked points per sequence (half background, half objects)
    seed: int = 0,  # base seed; scenes differ per split and sequence
    schema: str = "v1.2",  # annotation schema: v1.2 (anno.npz) or v1.0 (annotations.npz)
    jpeg_quality: int = 90,  # quality of the rgb_%05d.jpg frames
) -> None:
    names = [s.strip() for s in splits.split(",")] if isinstance(splits, str) else [str(s) for s in splits]
    if schema not in ("v1.2", "v1.0"):
        raise ValueError(f"schema must be v1.2 or v1.0, got {schema!r}")
    jobs = [(split, i) for split in names for i in range(num_sequences)]
    for split, i in tqdm(jobs, desc="scenes", unit="scene"):
        rng = np.random.default_rng([seed, zlib.crc32(split.encode()), i])
        scene = make_scene(num_frames, height, width, rng, num_points=num_points)
        write_sequence(scene, Path(out) / split / f"scene_{i:04d}", schema=schema, jpeg_quality=jpeg_quality)
    print(f"wrote {len(jobs)} sequences of {num_frames} frames ({height}x{width}, {schema}) to {out}")


if __name__ == "__main__":
    run(main)
