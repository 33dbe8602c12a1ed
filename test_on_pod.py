"""Evaluate PIPs++ on whole PointOdyssey sequences with the official protocol: queries are the ground
truth at frame 0, frames are read window by window and resized to image_size, and d_avg, survival_16
and median_l2 are measured at that resolution on the valid points (occluded ones included)."""

from dataclasses import dataclass

from datasets.pointodyssey import PointOdysseyFullSeq
from tracking.evaluate import EvalConfig, EvalProtocol, evaluate_and_report
from utils.config import knob, require, run


@dataclass(frozen=True)
class PodConfig(EvalConfig):
    dataset_location: str = knob("data/pointodyssey", "PointOdyssey root holding <dset>/<sequence>/")
    dset: str = knob("test", "split to evaluate")
    N: int = knob(256, "points per sequence (at most)")
    log_dir: str = knob("./logs_test_on_pod", "TensorBoard logs and results.json")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.N >= 1, "N", "at least 1", self.N)


def main(cfg: PodConfig) -> None:
    protocol = EvalProtocol(cfg.image_size, resize="cv2", S=cfg.S, iters=cfg.iters)
    evaluate_and_report(PointOdysseyFullSeq(cfg.dataset_location, dset=cfg.dset, N=cfg.N), protocol, cfg)


if __name__ == "__main__":
    run(main, PodConfig)
