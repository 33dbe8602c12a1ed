"""Evaluate PIPs++ on TAP-Vid-DAVIS with two protocols.

1. The official PIPs++ protocol: points visible at frame 0 are tracked from there through the video
   resized to image_size; d_avg, survival_16 and median_l2 on the visible frames.
2. The TAP-Vid benchmark: queries at each point's first visible frame ('first') or at every 5th frame
   where it is visible ('strided'), tracked forward and backward at image_size, scored in the 256x256
   TAP-Vid space. <delta_avg is reported, and with a visibility head (Pips(vis_head=True)) AJ and OA
   too; without one they are n/a (null in the JSON).
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from datasets.sample import EvalSequence
from datasets.tapvid import TapVidDavis
from nets.tracker import WindowModel, track
from tracking.evaluate import (
    EvalConfig,
    EvalProtocol,
    ExtraMetrics,
    Metrics,
    evaluate_and_report,
    scale_tracks,
)
from tracking.frames import Frames
from utils.config import knob, require, run
from utils.metrics import (
    TAPVID_QUERY_MODES,
    TAPVID_THRESHOLDS,
    compute_tapvid_metrics,
    sample_queries_first,
    sample_queries_strided,
)

TAPVID_SIZE = (256, 256)  # H,W of the space the TAP-Vid metrics are computed in


def tapvid_metrics(
    model: WindowModel,
    frames: Frames,
    size: tuple[int, int],
    seq: EvalSequence,
    mode: str,
    S: int,
    iters: int,
) -> Metrics:
    """TAP-Vid metrics of one video in one query mode, in percent. AJ and OA need the visibility head's
    estimate (occluded where its probability of visible is below 0.5); without it they are None."""
    gt_tracks = scale_tracks(seq.trajs, seq.image_hw, size).transpose(1, 0, 2)  # N,T,2
    gt_occluded = seq.visibs.T == 0  # N,T
    sample = sample_queries_first if mode == "first" else sample_queries_strided
    queries = sample(gt_occluded, gt_tracks)
    prefix = f"tapvid_{mode}/"
    out: Metrics = {f"{prefix}average_jaccard": None, f"{prefix}occlusion_accuracy": None}
    if queries.point_index.size == 0:
        return {f"{prefix}delta_avg": float("nan"), **out}
    device = frames.device
    txy = torch.from_numpy(queries.query_points[..., [0, 2, 1]]).to(device)  # 1,Q,3 as (t,x,y)
    result = track(model, frames, txy, S=S, iters=iters)
    pred = result.tracks.float().cpu().numpy()  # 1,T,Q,2
    pred_tracks = scale_tracks(pred.transpose(0, 2, 1, 3), size, TAPVID_SIZE)  # 1,Q,T,2
    if result.vis is None:
        pred_occluded = np.zeros_like(queries.gt_occluded)
    else:
        pred_occluded = (result.vis < 0).cpu().numpy().transpose(0, 2, 1)  # 1,Q,T: sigmoid below 0.5
    scores = compute_tapvid_metrics(
        queries.query_points,
        queries.gt_occluded,
        scale_tracks(queries.gt_tracks, size, TAPVID_SIZE),
        pred_occluded,
        pred_tracks,
        query_mode=mode,
    )
    if result.vis is not None:
        out[f"{prefix}average_jaccard"] = float(scores["average_jaccard"][0]) * 100
        out[f"{prefix}occlusion_accuracy"] = float(scores["occlusion_accuracy"][0]) * 100
    out[f"{prefix}delta_avg"] = float(scores["average_pts_within_thresh"][0]) * 100
    for thr in TAPVID_THRESHOLDS:
        out[f"{prefix}pts_within_{thr}"] = float(scores[f"pts_within_{thr}"][0]) * 100
    return out


def tapvid_extra(modes: Sequence[str], size: tuple[int, int], S: int, iters: int) -> ExtraMetrics:
    """The protocol's extra metrics: the TAP-Vid benchmark in each of `modes`."""

    def extra(model: WindowModel, frames: Frames, seq: EvalSequence) -> Metrics:
        out: Metrics = {}
        for mode in modes:
            out.update(tapvid_metrics(model, frames, size, seq, mode, S, iters))
        return out

    return extra


@dataclass(frozen=True)
class TapConfig(EvalConfig):
    dataset_location: str = knob("data/tapvid_davis", "folder holding tapvid_davis.pkl")
    query_modes: tuple[str, ...] = knob(TAPVID_QUERY_MODES, "TAP-Vid query modes to add ('' = none)")
    log_dir: str = knob("./logs_test_on_tap", "TensorBoard logs and results.json")

    def __post_init__(self) -> None:
        super().__post_init__()
        modes = ", ".join(TAPVID_QUERY_MODES)
        require(
            set(self.query_modes) <= set(TAPVID_QUERY_MODES),
            "query_modes",
            f"among {modes}",
            self.query_modes,
        )


def main(cfg: TapConfig) -> None:
    extra = tapvid_extra(cfg.query_modes, cfg.image_size, cfg.S, cfg.iters) if cfg.query_modes else None
    protocol = EvalProtocol(cfg.image_size, resize="bilinear", S=cfg.S, iters=cfg.iters, extra=extra)
    evaluate_and_report(TapVidDavis(cfg.dataset_location), protocol, cfg)


if __name__ == "__main__":
    run(main, TapConfig)
