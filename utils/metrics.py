"""Tracking metrics: the PIPs++ / PointOdyssey definitions and the TAP-Vid benchmark's.

Coordinates are x,y in pixels of the evaluated image unless stated otherwise. The PIPs++ metrics
are computed in float32 torch on the inputs' device, in the same order of operations as the official
code, so they reproduce its numbers; the TAP-Vid metrics are numpy, per video.
"""

from typing import NamedTuple

import numpy as np
import torch

PIPS_THRESHOLDS = (1, 2, 4, 8, 16)  # d_thr thresholds, in 256x256-normalised pixels
SURVIVAL_THRESHOLD = 16  # a track "dies" at its first valid frame farther than this (normalised pixels)
TAPVID_THRESHOLDS = (1, 2, 4, 8, 16)  # pixels of the 256x256 TAP-Vid space
TAPVID_QUERY_MODES = ("first", "strided")

Array = np.ndarray | torch.Tensor


def _float_tensor(x: Array, name: str, ndim: int) -> torch.Tensor:
    t = torch.as_tensor(x).detach()
    if t.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    return t.float()


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x where mask weighs it; 0 when the mask is empty (as the official code)."""
    denom = mask.sum()
    return torch.where(denom > 0, (x * mask).sum() / denom.clamp(min=1e-12), torch.zeros_like(denom))


def _masked_median(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Median along the last dim over entries with mask > 0 (mean of the two middle values for an
    even count, as numpy). Returns (medians, has_any); medians are NaN where has_any is False."""
    count = (mask > 0).sum(dim=-1, keepdim=True)  # ...,1
    ordered = torch.where(mask > 0, x, torch.full_like(x, float("inf"))).sort(dim=-1).values
    low = ordered.gather(-1, ((count - 1) // 2).clamp(min=0))
    high = ordered.gather(-1, (count // 2).clamp(max=x.shape[-1] - 1))
    has_any = count[..., 0] > 0
    medians = torch.where(has_any, ((low + high) / 2)[..., 0], torch.full_like(low[..., 0], float("nan")))
    return medians, has_any


def compute_pips_metrics(trajs_e: Array, trajs_g: Array, valids: Array, H: int, W: int) -> dict[str, float]:
    """PIPs++ evaluation metrics, with the official definitions.

    Args:
        trajs_e, trajs_g: B,S,N,2 estimated and ground-truth tracks, x,y pixels of an H x W image.
        valids: B,S,N, 1 where the ground truth is valid (occluded points included, as official).
    Returns:
        Floats in percent except median_l2. Errors are measured after scaling x by 256/W and y by
        256/H (a 256x256-normalised space).
        - d_1 .. d_16: share of valid entries at frames t >= 1 (frame 0, the query, is excluded) with
          error < thr; 0 when no entry is valid. d_avg: their mean.
        - survival: mean over all (b, t, n), frame 0 and invalid/padded entries included (as
          official), of "no valid frame up to t had an error > 16".
        - median_l2: per trajectory the median error over its valid frames (frame 0 included), then
          the mean over trajectories. Unlike the official code (which returns NaN), trajectories with
          no valid frame are skipped; it is NaN only when no trajectory has one.
    """
    trajs_e = _float_tensor(trajs_e, "trajs_e", 4)
    trajs_g = _float_tensor(trajs_g, "trajs_g", 4)
    valids = _float_tensor(valids, "valids", 3).to(trajs_e.device)
    trajs_g = trajs_g.to(trajs_e.device)
    if trajs_e.shape != trajs_g.shape or trajs_e.shape[-1] != 2 or valids.shape != trajs_e.shape[:3]:
        raise ValueError(
            f"expected trajs_e, trajs_g B,S,N,2 and valids B,S,N; got {tuple(trajs_e.shape)}, "
            f"{tuple(trajs_g.shape)}, {tuple(valids.shape)}"
        )
    scale = torch.tensor([W / 256.0, H / 256.0], dtype=torch.float32, device=trajs_e.device)
    dists = torch.linalg.vector_norm(trajs_e / scale - trajs_g / scale, dim=-1)  # B,S,N

    metrics = {}
    for thr in PIPS_THRESHOLDS:
        within = (dists[:, 1:] < thr).float()  # B,S-1,N
        metrics[f"d_{thr}"] = _masked_mean(within, valids[:, 1:]).item() * 100.0
    metrics["d_avg"] = sum(metrics[f"d_{thr}"] for thr in PIPS_THRESHOLDS) / len(PIPS_THRESHOLDS)

    alive = 1 - (dists > SURVIVAL_THRESHOLD).float() * valids  # B,S,N
    metrics["survival"] = torch.cumprod(alive, dim=1).mean().item() * 100.0

    medians, has_any = _masked_median(dists.transpose(1, 2), valids.transpose(1, 2))  # B,N
    metrics["median_l2"] = medians[has_any].mean().item() if has_any.any() else float("nan")
    return metrics


def occlusion_accuracy(visible_e: Array, visibs: Array, valids: Array) -> float:
    """Share (percent) of valid entries at frames t >= 1 whose predicted visibility is right.

    Args:
        visible_e: B,S,N predicted visibility (> 0.5 counts as visible: probabilities or 0/1).
        visibs, valids: B,S,N ground truth (1 = visible) and where it is valid.
    Returns:
        NaN when no entry is valid.
    """
    visible_e = _float_tensor(visible_e, "visible_e", 3)
    visibs = _float_tensor(visibs, "visibs", 3).to(visible_e.device)
    valids = _float_tensor(valids, "valids", 3).to(visible_e.device)
    if not visible_e.shape == visibs.shape == valids.shape:
        raise ValueError(
            f"expected visible_e, visibs, valids all B,S,N; got {tuple(visible_e.shape)}, "
            f"{tuple(visibs.shape)}, {tuple(valids.shape)}"
        )
    mask = valids[:, 1:]
    if mask.sum() == 0:
        return float("nan")
    right = ((visible_e[:, 1:] > 0.5) == (visibs[:, 1:] > 0.5)).float()
    return (right * mask).sum().item() / mask.sum().item() * 100.0


def compute_ate(trajs_e: Array, trajs_g: Array, visibs: Array, valids: Array) -> dict[str, float]:
    """Average track error in pixels (L2), for training logs.

    Args:
        trajs_e, trajs_g: B,S,N,2 x,y pixels; visibs, valids: B,S,N in {0,1}.
    Returns:
        ate_all (mask valids), ate_vis (valids*visibs), ate_occ (valids*(1-visibs)): the masked mean
        per batch item, then the mean over the items whose mask is not empty (NaN if none is).
    """
    trajs_e = _float_tensor(trajs_e, "trajs_e", 4)
    device = trajs_e.device
    trajs_g = _float_tensor(trajs_g, "trajs_g", 4).to(device)
    visibs = _float_tensor(visibs, "visibs", 3).to(device)
    valids = _float_tensor(valids, "valids", 3).to(device)
    if trajs_e.shape != trajs_g.shape or visibs.shape != trajs_e.shape[:3] or valids.shape != visibs.shape:
        raise ValueError(
            f"expected trajs_e, trajs_g B,S,N,2 and visibs, valids B,S,N; got {tuple(trajs_e.shape)}, "
            f"{tuple(trajs_g.shape)}, {tuple(visibs.shape)}, {tuple(valids.shape)}"
        )
    dists = torch.linalg.vector_norm(trajs_e - trajs_g, dim=-1)  # B,S,N
    masks = {"ate_all": valids, "ate_vis": valids * visibs, "ate_occ": valids * (1 - visibs)}
    out = {}
    for name, mask in masks.items():
        denom = mask.sum(dim=(1, 2))  # B
        per_item = (dists * mask).sum(dim=(1, 2)) / denom.clamp(min=1e-12)  # B
        out[name] = per_item[denom > 0].mean().item() if (denom > 0).any() else float("nan")
    return out


def compute_tapvid_metrics(
    query_points: np.ndarray,
    gt_occluded: np.ndarray,
    gt_tracks: np.ndarray,
    pred_occluded: np.ndarray,
    pred_tracks: np.ndarray,
    query_mode: str,
) -> dict[str, np.ndarray]:
    """TAP-Vid metrics (Doersch et al. 2022), per video.

    Args:
        query_points: b,n,3 as (t, y, x); only the frame index t is used here.
        gt_occluded, pred_occluded: b,n,t bool, True = occluded.
        gt_tracks, pred_tracks: b,n,t,2 as x,y in the 256x256 TAP-Vid space.
        query_mode: 'first' evaluates only frames after each query; 'strided' all frames but the
            query's own. The query frame is never evaluated.
    Returns:
        Arrays of length b: occlusion_accuracy, pts_within_{1,2,4,8,16} (share of visible gt points
        predicted within the threshold, whatever the predicted occlusion), jaccard_{1,2,4,8,16}
        (true positives / (gt visible + false positives), where a true positive is visible, predicted
        visible and within the threshold, and a false positive is predicted visible but occluded or
        off by the threshold or more), average_jaccard and average_pts_within_thresh (mean over the
        thresholds). The occlusion accuracy is normalised per video. A video with nothing to
        evaluate gets NaN.
    """
    if query_mode not in TAPVID_QUERY_MODES:
        raise ValueError(f"unknown query_mode {query_mode!r}; expected one of {TAPVID_QUERY_MODES}")
    b, n, t = np.shape(gt_occluded)
    expected = {
        "query_points": (b, n, 3),
        "pred_occluded": (b, n, t),
        "gt_tracks": (b, n, t, 2),
        "pred_tracks": (b, n, t, 2),
    }
    given = [query_points, pred_occluded, gt_tracks, pred_tracks]
    for (name, shape), arr in zip(expected.items(), given):
        if np.shape(arr) != shape:
            raise ValueError(f"{name} must have shape {shape} to match gt_occluded, got {np.shape(arr)}")

    query_frames = np.round(np.asarray(query_points)[..., 0]).astype(np.int64)  # b,n
    if query_frames.size and (query_frames.min() < 0 or query_frames.max() >= t):
        raise ValueError(f"query frames must lie in [0, {t}), got {query_frames.min()}..{query_frames.max()}")
    frames = np.arange(t)
    if query_mode == "first":
        evaluated = frames > query_frames[..., None]  # b,n,t
    else:
        evaluated = frames != query_frames[..., None]  # b,n,t

    visible = ~np.asarray(gt_occluded, dtype=bool)
    pred_visible = ~np.asarray(pred_occluded, dtype=bool)
    diff = np.asarray(pred_tracks, np.float64) - np.asarray(gt_tracks, np.float64)  # b,n,t,2
    sq_err = np.sum(np.square(diff), axis=-1)  # b,n,t

    def count(mask: np.ndarray) -> np.ndarray:
        return np.sum(mask & evaluated, axis=(1, 2))  # b

    metrics = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        metrics["occlusion_accuracy"] = count(visible == pred_visible) / count(np.ones_like(visible))
        n_visible = count(visible)
        for thr in TAPVID_THRESHOLDS:
            within = sq_err < thr**2  # b,n,t
            correct = within & visible
            metrics[f"pts_within_{thr}"] = count(correct) / n_visible
            false_positives = pred_visible & (~visible | ~within)
            metrics[f"jaccard_{thr}"] = count(correct & pred_visible) / (n_visible + count(false_positives))
    metrics["average_jaccard"] = np.mean([metrics[f"jaccard_{thr}"] for thr in TAPVID_THRESHOLDS], axis=0)
    metrics["average_pts_within_thresh"] = np.mean(
        [metrics[f"pts_within_{thr}"] for thr in TAPVID_THRESHOLDS], axis=0
    )
    return metrics


class TapVidQueries(NamedTuple):
    """Queries of one video, laid out for compute_tapvid_metrics (leading batch dimension 1)."""

    query_points: np.ndarray  # 1,Q,3 float32 as (t, y, x)
    gt_occluded: np.ndarray  # 1,Q,T bool, the queried point's ground truth
    gt_tracks: np.ndarray  # 1,Q,T,2 float32 x,y
    point_index: np.ndarray  # Q int64, the point of each query in the input arrays


def _check_video_gt(gt_occluded: np.ndarray, gt_tracks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gt_occluded = np.asarray(gt_occluded, dtype=bool)
    gt_tracks = np.asarray(gt_tracks, dtype=np.float32)
    if gt_occluded.ndim != 2 or gt_tracks.shape != (*gt_occluded.shape, 2):
        raise ValueError(
            f"expected gt_occluded N,T and gt_tracks N,T,2 of one video, got {gt_occluded.shape} "
            f"and {gt_tracks.shape}"
        )
    return gt_occluded, gt_tracks


def _make_queries(
    gt_occluded: np.ndarray, gt_tracks: np.ndarray, point_index: np.ndarray, frame_index: np.ndarray
) -> TapVidQueries:
    xy = gt_tracks[point_index, frame_index]  # Q,2
    query_points = np.stack([frame_index.astype(np.float32), xy[:, 1], xy[:, 0]], axis=-1)  # Q,3
    return TapVidQueries(
        query_points=query_points[None].astype(np.float32),
        gt_occluded=gt_occluded[point_index][None],
        gt_tracks=gt_tracks[point_index][None],
        point_index=point_index.astype(np.int64),
    )


def sample_queries_first(gt_occluded: np.ndarray, gt_tracks: np.ndarray) -> TapVidQueries:
    """One query per point at its first visible frame ('first' mode); points never visible are dropped.

    Args: gt_occluded N,T bool and gt_tracks N,T,2 (x,y) of one video.
    """
    gt_occluded, gt_tracks = _check_video_gt(gt_occluded, gt_tracks)
    ever_visible = ~gt_occluded.all(axis=1)  # N
    point_index = np.flatnonzero(ever_visible)  # Q
    frame_index = np.argmax(~gt_occluded[point_index], axis=1)  # Q
    return _make_queries(gt_occluded, gt_tracks, point_index, frame_index)


def sample_queries_strided(
    gt_occluded: np.ndarray, gt_tracks: np.ndarray, query_stride: int = 5
) -> TapVidQueries:
    """One query per (point, frame) for frames 0, query_stride, 2*query_stride, ... where the point
    is visible ('strided' mode), ordered by frame then point.

    Args: gt_occluded N,T bool and gt_tracks N,T,2 (x,y) of one video.
    """
    if query_stride < 1:
        raise ValueError(f"query_stride must be >= 1, got {query_stride}")
    gt_occluded, gt_tracks = _check_video_gt(gt_occluded, gt_tracks)
    strided_visible = ~gt_occluded[:, ::query_stride]  # N,T'
    frame_slot, point_index = np.nonzero(strided_visible.T)  # Q, Q (frame-major order)
    return _make_queries(gt_occluded, gt_tracks, point_index, frame_slot * query_stride)
