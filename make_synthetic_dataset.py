"""Writes procedural scenes with exact tracks in the PointOdyssey layout:
<out>/<split>/<seq>/{rgbs/rgb_%05d.jpg, masks/mask_%05d.png, anno.npz, info.npz} (v1.2) or
annotations.npz (v1.0). Every scene is a pure function of (seed, split name, sequence index)."""

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm import tqdm

from datasets.synthetic import MIN_SCENE_SIDE, make_scene, write_sequence
from utils.config import knob, require, run


@dataclass(frozen=True)
class SyntheticConfig:
    out: str = knob("data/synth_pod", "dataset root to write")
    splits: tuple[str, ...] = knob(("train", "val", "test"), "comma-separated split names")
    num_sequences: int = knob(4, "sequences per split")
    num_frames: int = knob(64, "frames per sequence")
    height: int = knob(540, "frame height in pixels")
    width: int = knob(960, "frame width in pixels")
    num_points: int = knob(4096, "tracked points per sequence (half background, half objects)")
    seed: int = knob(0, "base seed; scenes differ per split and sequence")
    schema: Literal["v1.2", "v1.0"] = knob(
        "v1.2", "annotation schema: v1.2 (anno.npz) or v1.0 (annotations.npz)"
    )
    jpeg_quality: int = knob(90, "quality of the rgb_%05d.jpg frames")

    def __post_init__(self) -> None:
        require(len(self.splits) > 0, "splits", "at least one split name", self.splits)
        for name in ("num_sequences", "num_frames", "num_points"):
            require(getattr(self, name) >= 1, name, "at least 1", getattr(self, name))
        for name in ("height", "width"):
            require(
                getattr(self, name) >= MIN_SCENE_SIDE, name, f"at least {MIN_SCENE_SIDE}", getattr(self, name)
            )
        require(1 <= self.jpeg_quality <= 100, "jpeg_quality", "in 1..100", self.jpeg_quality)


def main(cfg: SyntheticConfig) -> None:
    jobs = [(split, i) for split in cfg.splits for i in range(cfg.num_sequences)]
    for split, i in tqdm(jobs, desc="scenes", unit="scene"):
        rng = np.random.default_rng([cfg.seed, zlib.crc32(split.encode()), i])
        scene = make_scene(cfg.num_frames, cfg.height, cfg.width, rng, num_points=cfg.num_points)
        folder = Path(cfg.out) / split / f"scene_{i:04d}"
        write_sequence(scene, folder, schema=cfg.schema, jpeg_quality=cfg.jpeg_quality)
    size = f"{cfg.height}x{cfg.width}, {cfg.schema}"
    print(f"wrote {len(jobs)} sequences of {cfg.num_frames} frames ({size}) to {cfg.out}")


if __name__ == "__main__":
    run(main, SyntheticConfig)
