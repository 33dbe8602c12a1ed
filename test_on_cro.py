"""Evaluate PIPs++ on CroHD (HT21 head tracks) with the official protocol: clips of up to 1000 frames,
head-box centres visible at frames 0 and 1 as queries, frames read window by window and resized to
image_size, and d_avg, survival_16 and median_l2 at that resolution on the valid frames."""

from dataclasses import dataclass

from datasets.crohd import CroHD
from tracking.evaluate import EvalConfig, EvalProtocol, evaluate_and_report
from utils.config import knob, require, run


@dataclass(frozen=True)
class CroConfig(EvalConfig):
    dataset_location: str = knob("data/crohd", "folder holding HT21/train/HT21-0x/")
    clip_len: int = knob(1000, "frames per clip; clips start every clip_len // 2 frames")
    min_clip_len: int = knob(128, "shorter clips (at the end of a sequence) are skipped")
    log_dir: str = knob("./logs_test_on_cro", "TensorBoard logs and results.json")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.clip_len >= 2, "clip_len", "at least 2", self.clip_len)
        require(1 <= self.min_clip_len <= self.clip_len, "min_clip_len", "in 1..clip_len", self.min_clip_len)


def main(cfg: CroConfig) -> None:
    protocol = EvalProtocol(cfg.image_size, resize="cv2", S=cfg.S, iters=cfg.iters)
    evaluate_and_report(CroHD(cfg.dataset_location, S=cfg.clip_len, S_min=cfg.min_clip_len), protocol, cfg)


if __name__ == "__main__":
    run(main, CroConfig)
