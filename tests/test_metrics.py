import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from utils.metrics import (
    compute_ate,
    compute_pips_metrics,
    compute_tapvid_metrics,
    occlusion_accuracy,
    sample_queries_first,
    sample_queries_strided,
)

FIXTURE = Path(__file__).parent / "fixtures" / "pips2_ref_seed0.npz"


def test_pips_metrics_match_official_fixture():
    ref = np.load(FIXTURE)
    metrics = compute_pips_metrics(
        ref["metric_trajs_e"], ref["trajs_g"], ref["valids"], int(ref["H"]), int(ref["W"])
    )
    assert set(metrics) == {"d_1", "d_2", "d_4", "d_8", "d_16", "d_avg", "survival", "median_l2"}
    for name, value in metrics.items():
        assert value == pytest.approx(float(ref[f"metric_{name}"]), abs=1e-6), name


def _toy_pips():
    """3 frames, 3 points on a 256x256 image (no rescaling), with errors along x.

    Point 0 is off by 0, 3, 20 and always valid; point 1 by 0, 0.5, 10 and invalid at frame 2; point 2 by
    100 everywhere and never valid.
    """
    trajs_g = np.full((1, 3, 3, 2), 50.0, dtype=np.float32)
    errors = np.array([[0, 0, 100], [3, 0.5, 100], [20, 10, 100]], dtype=np.float32)  # S,N
    trajs_e = trajs_g.copy()
    trajs_e[0, :, :, 0] += errors
    valids = np.array([[1, 1, 0], [1, 1, 0], [1, 0, 0]], dtype=np.float32)[None]
    return trajs_e, trajs_g, valids


def test_pips_metrics_hand_computed():
    metrics = compute_pips_metrics(*_toy_pips(), H=256, W=256)
    # valid entries at t >= 1: errors 3, 20 (point 0) and 0.5 (point 1)
    assert metrics["d_1"] == pytest.approx(100 / 3)
    assert metrics["d_2"] == pytest.approx(100 / 3)
    for thr in (4, 8, 16):
        assert metrics[f"d_{thr}"] == pytest.approx(200 / 3)
    assert metrics["d_avg"] == pytest.approx((100 / 3 * 2 + 200 / 3 * 3) / 5)
    # survival: point 0 dies at frame 2 (20 > 16); point 1's error 10 is fine anyway; point 2 is never
    # valid, so it survives everywhere (official definition): 8 of 9 entries alive
    assert metrics["survival"] == pytest.approx(800 / 9)
    # median_l2: median(0, 3, 20) = 3 and median(0, 0.5) = 0.25; point 2 is skipped, not NaN
    assert metrics["median_l2"] == pytest.approx((3 + 0.25) / 2)


def test_pips_metrics_normalise_by_256_per_axis():
    # W=512, H=128: an x error of 4 px and a y error of 1 px are both 2 normalised pixels
    trajs_g = np.zeros((1, 2, 2, 2), dtype=np.float32)
    trajs_e = trajs_g.copy()
    trajs_e[0, 1, 0] = [4.0, 0.0]
    trajs_e[0, 1, 1] = [0.0, 1.0]
    metrics = compute_pips_metrics(trajs_e, trajs_g, np.ones((1, 2, 2)), H=128, W=512)
    assert metrics["d_2"] == 0.0
    assert metrics["d_4"] == 100.0
    assert metrics["median_l2"] == pytest.approx(1.0)  # median of (0, 2) per track


def test_pips_metrics_accept_torch_and_numpy_alike():
    trajs_e, trajs_g, valids = _toy_pips()
    from_numpy = compute_pips_metrics(trajs_e, trajs_g, valids, H=256, W=256)
    from_torch = compute_pips_metrics(
        torch.from_numpy(trajs_e), torch.from_numpy(trajs_g), torch.from_numpy(valids) > 0, H=256, W=256
    )
    assert from_torch == from_numpy


def test_pips_metrics_without_any_valid_entry():
    trajs_e, trajs_g, _ = _toy_pips()
    metrics = compute_pips_metrics(trajs_e, trajs_g, np.zeros((1, 3, 3)), H=256, W=256)
    assert metrics["d_1"] == 0.0
    assert metrics["survival"] == 100.0
    assert np.isnan(metrics["median_l2"])


def test_pips_metrics_reject_bad_shapes():
    trajs_e, trajs_g, valids = _toy_pips()
    with pytest.raises(ValueError, match="trajs_e must have 4 dimensions"):
        compute_pips_metrics(trajs_e[0], trajs_g, valids, H=256, W=256)
    with pytest.raises(ValueError, match="valids B,S,N"):
        compute_pips_metrics(trajs_e, trajs_g, valids[:, :2], H=256, W=256)


def test_ate_masks_by_visibility():
    trajs_g = np.full((2, 1, 2, 2), 30.0, dtype=np.float32)
    trajs_e = trajs_g.copy()
    trajs_e[0, 0, 0] += [3.0, -4.0]  # error 5, visible
    trajs_e[0, 0, 1] += [-6.0, 8.0]  # error 10, occluded
    trajs_e[1, 0, 0] += [1.0, 0.0]  # error 1, visible; item 1 has no occluded point
    visibs = np.array([[[1, 0]], [[1, 1]]], dtype=np.float32)
    valids = np.array([[[1, 1]], [[1, 0]]], dtype=np.float32)
    ate = compute_ate(trajs_e, trajs_g, visibs, valids)
    assert ate["ate_all"] == pytest.approx((7.5 + 1.0) / 2)
    assert ate["ate_vis"] == pytest.approx((5.0 + 1.0) / 2)
    assert ate["ate_occ"] == pytest.approx(10.0)  # item 1 has an empty mask and is skipped
    assert np.isnan(compute_ate(trajs_e, trajs_g, np.ones_like(visibs), valids)["ate_occ"])


def _toy_tapvid():
    """One point tracked over 5 frames, queried at frame 1, occluded at frame 3.

    prediction: frame 0 far off (100, 100), frame 2 off by 1.5 px, frame 3 predicted visible,
    frame 4 off by 5 px and predicted occluded.
    """
    query_points = np.array([[[1.0, 10.0, 10.0]]])
    gt_tracks = np.full((1, 1, 5, 2), 10.0)
    gt_occluded = np.array([[[False, False, False, True, False]]])
    pred_tracks = gt_tracks.copy()
    pred_tracks[0, 0, 0] = [100.0, 100.0]
    pred_tracks[0, 0, 2, 0] += 1.5
    pred_tracks[0, 0, 4, 1] += 5.0
    pred_occluded = np.array([[[False, False, False, False, True]]])
    return query_points, gt_occluded, gt_tracks, pred_occluded, pred_tracks


def test_tapvid_first_mode_hand_computed():
    metrics = compute_tapvid_metrics(*_toy_tapvid(), query_mode="first")
    # evaluated frames 2, 3, 4: occlusion right at 2, wrong at 3 and 4; visible gt at 2 and 4
    np.testing.assert_allclose(metrics["occlusion_accuracy"], [1 / 3])
    expected_within = {1: 0.0, 2: 0.5, 4: 0.5, 8: 1.0, 16: 1.0}
    # thr 1: nothing within, false positives at frames 2 (too far) and 3 (occluded) -> 0 / (2 + 2)
    # thr >= 2: frame 2 is a true positive, frame 3 a false positive, frame 4 predicted occluded
    expected_jaccard = {1: 0.0, 2: 1 / 3, 4: 1 / 3, 8: 1 / 3, 16: 1 / 3}
    for thr in (1, 2, 4, 8, 16):
        np.testing.assert_allclose(metrics[f"pts_within_{thr}"], [expected_within[thr]])
        np.testing.assert_allclose(metrics[f"jaccard_{thr}"], [expected_jaccard[thr]])
    np.testing.assert_allclose(metrics["average_jaccard"], [4 / 15])
    np.testing.assert_allclose(metrics["average_pts_within_thresh"], [3 / 5])


def test_tapvid_strided_mode_evaluates_frames_before_the_query():
    metrics = compute_tapvid_metrics(*_toy_tapvid(), query_mode="strided")
    # frame 0 joins: visible, predicted visible, 127 px off -> one more gt point and false positive
    np.testing.assert_allclose(metrics["occlusion_accuracy"], [2 / 4])
    np.testing.assert_allclose(metrics["pts_within_2"], [1 / 3])
    np.testing.assert_allclose(metrics["jaccard_2"], [1 / 5])
    np.testing.assert_allclose(metrics["jaccard_1"], [0.0])


def test_tapvid_metrics_per_video():
    one = _toy_tapvid()
    two = [np.concatenate([a, a]) for a in one]
    two[4][1] = two[2][1]  # second video: perfect positions
    two[3][1] = two[1][1]  # and perfect occlusion
    metrics = compute_tapvid_metrics(*two, query_mode="first")
    np.testing.assert_allclose(metrics["average_jaccard"], [4 / 15, 1.0])
    np.testing.assert_allclose(metrics["occlusion_accuracy"], [1 / 3, 1.0])
    np.testing.assert_allclose(metrics["average_pts_within_thresh"], [3 / 5, 1.0])


def _two_points_gt():
    """Point 0 is occluded at frame 2; point 1 is always visible. 6 frames."""
    gt_occluded = np.zeros((2, 6), dtype=bool)
    gt_occluded[0, 2] = True
    gt_tracks = np.stack([np.full((6, 2), [5.0, 7.0]), np.full((6, 2), [20.0, 30.0])]).astype(np.float32)
    return gt_occluded, gt_tracks


def test_strided_queries_skip_occluded_query_frames():
    gt_occluded, gt_tracks = _two_points_gt()
    queries = sample_queries_strided(gt_occluded, gt_tracks, query_stride=2)
    # query frames 0, 2, 4; point 0 is occluded at frame 2 so it gets no query there
    np.testing.assert_array_equal(queries.point_index, [0, 1, 1, 0, 1])
    np.testing.assert_array_equal(queries.query_points[0, :, 0], [0, 0, 2, 4, 4])
    np.testing.assert_array_equal(queries.query_points[0, 0], [0.0, 7.0, 5.0])  # t, y, x
    np.testing.assert_array_equal(queries.query_points[0, 1], [0.0, 30.0, 20.0])
    assert queries.gt_occluded.shape == (1, 5, 6)
    assert queries.gt_tracks.shape == (1, 5, 6, 2)
    np.testing.assert_array_equal(queries.gt_occluded[0, 3], gt_occluded[0])


def test_strided_occluded_frames_lower_jaccard_and_occlusion_accuracy():
    gt_occluded, gt_tracks = _two_points_gt()
    q = sample_queries_strided(gt_occluded, gt_tracks, query_stride=2)
    perfect = compute_tapvid_metrics(
        q.query_points, q.gt_occluded, q.gt_tracks, q.gt_occluded, q.gt_tracks, "strided"
    )
    assert perfect["average_jaccard"][0] == 1.0
    assert perfect["occlusion_accuracy"][0] == 1.0
    always_visible = np.zeros_like(q.gt_occluded)
    metrics = compute_tapvid_metrics(
        q.query_points, q.gt_occluded, q.gt_tracks, always_visible, q.gt_tracks, "strided"
    )
    # 5 queries x 5 evaluated frames; point 0's two queries (frames 0 and 4) each see frame 2 as a
    # visible-predicted occluded frame: 2 of 25 wrong, and 23 true positives vs 23 visible + 2 false positives
    np.testing.assert_allclose(metrics["occlusion_accuracy"], [23 / 25])
    np.testing.assert_allclose(metrics["average_jaccard"], [23 / 25])
    np.testing.assert_allclose(metrics["average_pts_within_thresh"], [1.0])


def test_first_queries_use_first_visible_frame_and_drop_never_visible_points():
    gt_occluded = np.array([[True, True, False, False], [True, True, True, True], [False] * 4])
    gt_tracks = np.arange(3 * 4 * 2, dtype=np.float32).reshape(3, 4, 2)
    queries = sample_queries_first(gt_occluded, gt_tracks)
    np.testing.assert_array_equal(queries.point_index, [0, 2])
    np.testing.assert_array_equal(queries.query_points[0], [[2, 5, 4], [0, 17, 16]])
    np.testing.assert_array_equal(queries.gt_tracks[0, 1], gt_tracks[2])


def test_tapvid_rejects_bad_input():
    args = list(_toy_tapvid())
    with pytest.raises(ValueError, match="unknown query_mode 'last'"):
        compute_tapvid_metrics(*args, query_mode="last")
    bad = args.copy()
    bad[4] = bad[4][:, :, :4]
    with pytest.raises(ValueError, match="pred_tracks must have shape"):
        compute_tapvid_metrics(*bad, query_mode="first")
    bad = args.copy()
    bad[0] = np.array([[[5.0, 0.0, 0.0]]])
    with pytest.raises(ValueError, match="query frames must lie in"):
        compute_tapvid_metrics(*bad, query_mode="first")
    with pytest.raises(ValueError, match="query_stride"):
        sample_queries_strided(*_two_points_gt(), query_stride=0)
    with pytest.raises(ValueError, match="gt_tracks N,T,2"):
        sample_queries_first(np.zeros((2, 6), dtype=bool), np.zeros((2, 5, 2)))


def _errors_along_x(errors: list[float], H: int = 256, W: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """One point whose estimate is off by errors[t] pixels in x at frame t -> trajs_e, trajs_g 1,S,1,2."""
    trajs_g = np.full((1, len(errors), 1, 2), 40.0, dtype=np.float32)
    trajs_e = trajs_g.copy()
    trajs_e[0, :, 0, 0] += np.asarray(errors, dtype=np.float32)
    return trajs_e, trajs_g


def test_pips_thresholds_are_strict_and_a_track_dies_only_beyond_16():
    # official: d_thr counts dist < thr; a track dies at its first valid frame with dist > 16
    trajs_e, trajs_g = _errors_along_x([0, 1, 2, 4, 8, 16, 17])
    metrics = compute_pips_metrics(trajs_e, trajs_g, np.ones((1, 7, 1)), H=256, W=256)
    # frames 1..6 carry errors 1, 2, 4, 8, 16, 17: an error equal to a threshold is not within it
    for thr, within in {1: 0, 2: 1, 4: 2, 8: 3, 16: 4}.items():
        assert metrics[f"d_{thr}"] == pytest.approx(100 * within / 6), thr
    assert metrics["d_avg"] == pytest.approx(100 * 10 / 30)
    assert metrics["survival"] == pytest.approx(100 * 6 / 7)  # alive at frames 0..5 (error 16 included)
    assert metrics["median_l2"] == pytest.approx(4.0)  # median of 0, 1, 2, 4, 8, 16, 17


def test_pips_thresholds_apply_in_the_256_space_per_axis():
    # 512 wide, 128 high: 32 px in x and 8 px in y are both exactly 16 normalised pixels
    trajs_g = np.zeros((1, 3, 2, 2), dtype=np.float32)
    trajs_e = trajs_g.copy()
    trajs_e[0, 1:, 0] = [32.0, 0.0]
    trajs_e[0, 1:, 1] = [0.0, 8.0]
    metrics = compute_pips_metrics(trajs_e, trajs_g, np.ones((1, 3, 2)), H=128, W=512)
    assert metrics["d_16"] == 0.0 and metrics["d_8"] == 0.0
    assert metrics["survival"] == 100.0
    trajs_e[0, 2, 1] = [0.0, 8.5]  # 17: point 1 dies at frame 2
    metrics = compute_pips_metrics(trajs_e, trajs_g, np.ones((1, 3, 2)), H=128, W=512)
    assert metrics["survival"] == pytest.approx(100 * 5 / 6)


def test_survival_ignores_invalid_frames_and_counts_every_entry():
    # the error 50 at frame 1 is invalid, so the track lives on until the valid error 20 at frame 3
    trajs_e, trajs_g = _errors_along_x([0, 50, 3, 20, 1])
    valids = np.array([[[1], [0], [1], [1], [1]]], dtype=np.float32)
    metrics = compute_pips_metrics(trajs_e, trajs_g, valids, H=256, W=256)
    assert metrics["survival"] == pytest.approx(100 * 3 / 5)  # dead at frames 3 and 4
    assert metrics["d_4"] == pytest.approx(100 * 2 / 3)  # valid frames 2, 3, 4: errors 3, 20, 1
    assert metrics["median_l2"] == pytest.approx(2.0)  # median of 0, 3, 20, 1 (even count: mean of 1 and 3)


def test_median_l2_over_a_batch_skips_only_tracks_without_valid_frames():
    trajs_e = np.zeros((2, 3, 2, 2), dtype=np.float32)
    trajs_g = np.zeros_like(trajs_e)
    trajs_e[0, :, 0, 0] = [1, 5, 9]  # valid everywhere: median 5
    trajs_e[0, :, 1, 0] = [7, 7, 7]  # never valid: skipped
    trajs_e[1, :, 0, 1] = [2, 4, 100]  # valid at frames 0, 1: median 3
    trajs_e[1, :, 1, 1] = [6, 6, 6]  # valid at frame 2 only: median 6
    valids = np.zeros((2, 3, 2), dtype=np.float32)
    valids[0, :, 0] = 1
    valids[1, :2, 0] = 1
    valids[1, 2, 1] = 1
    metrics = compute_pips_metrics(trajs_e, trajs_g, valids, H=256, W=256)
    assert metrics["median_l2"] == pytest.approx((5 + 3 + 6) / 3)
    # frames >= 1 over both clips: errors 5, 9 (clip 0), 4 (clip 1, point 0), 6 (clip 1, point 1)
    assert metrics["d_8"] == pytest.approx(100 * 3 / 4)


def test_tapvid_thresholds_are_strict():
    # errors of exactly 1, 2, 4, 8 and 16 px at the five frames after the query, all visible
    errors = np.array([0, 1, 2, 4, 8, 16], dtype=np.float64)
    gt_tracks = np.full((1, 1, 6, 2), 100.0)
    pred_tracks = gt_tracks.copy()
    pred_tracks[0, 0, :, 1] += errors
    occluded = np.zeros((1, 1, 6), dtype=bool)
    metrics = compute_tapvid_metrics(np.zeros((1, 1, 3)), occluded, gt_tracks, occluded, pred_tracks, "first")
    for i, thr in enumerate((1, 2, 4, 8, 16)):
        np.testing.assert_allclose(metrics[f"pts_within_{thr}"], [i / 5])
        # within: true positive; off by thr or more: a false positive on top of the visible point
        np.testing.assert_allclose(metrics[f"jaccard_{thr}"], [i / (5 + 5 - i)])
    np.testing.assert_allclose(metrics["occlusion_accuracy"], [1.0])


def test_occlusion_accuracy_by_hand():
    # B=1, S=4, N=2; frame 0 is never scored; a probability of exactly 0.5 counts as occluded
    visible_e = np.array([[[0.0, 0.0], [0.9, 0.5], [0.2, 0.51], [1.0, 0.0]]], dtype=np.float32)
    visibs = np.array([[[1, 1], [1, 1], [0, 1], [1, 1]]], dtype=np.float32)
    valids = np.array([[[1, 1], [1, 1], [1, 1], [0, 1]]], dtype=np.float32)
    # scored entries: (1,0) right, (1,1) wrong, (2,0) right, (2,1) right, (3,1) wrong -> 3 of 5
    assert occlusion_accuracy(visible_e, visibs, valids) == pytest.approx(60.0)
    assert np.isnan(occlusion_accuracy(visible_e, visibs, np.zeros_like(valids)))
    assert occlusion_accuracy(torch.from_numpy(visibs), visibs, valids) == 100.0
    with pytest.raises(ValueError, match="visible_e, visibs, valids all B,S,N"):
        occlusion_accuracy(visible_e[:, :3], visibs, valids)


def full_match(message: str) -> str:
    return f"^{re.escape(message)}$"


def test_bad_shapes_are_named_in_the_error():
    trajs, masks = np.zeros((1, 3, 2, 2)), np.ones((1, 3, 2))
    pips = {"trajs_e": trajs, "trajs_g": trajs, "valids": masks}
    ate = {"trajs_e": trajs, "trajs_g": trajs, "visibs": masks, "valids": masks}
    occlusion = {"visible_e": masks, "visibs": masks, "valids": masks}
    for function, args in [(compute_pips_metrics, pips), (compute_ate, ate), (occlusion_accuracy, occlusion)]:
        extra = {"H": 256, "W": 256} if function is compute_pips_metrics else {}
        for name, value in args.items():
            message = f"{name} must have {value.ndim} dimensions, got shape {value[0].shape}"
            with pytest.raises(ValueError, match=full_match(message)):
                function(**(args | {name: value[0]}), **extra)
    other = np.zeros((1, 3, 3, 2))  # three points where the estimate has two
    message = "expected trajs_e, trajs_g B,S,N,2 and valids B,S,N; got (1, 3, 2, 2), (1, 3, 3, 2), (1, 3, 2)"
    with pytest.raises(ValueError, match=full_match(message)):
        compute_pips_metrics(trajs, other, masks, H=256, W=256)
    with pytest.raises(ValueError, match=r"got \(1, 3, 2, 3\), \(1, 3, 2, 3\), \(1, 3, 2\)$"):
        compute_pips_metrics(np.zeros((1, 3, 2, 3)), np.zeros((1, 3, 2, 3)), masks, H=256, W=256)
    expected = "expected trajs_e, trajs_g B,S,N,2 and visibs, valids B,S,N; got "
    for bad, shapes in [
        ({"trajs_g": other}, "(1, 3, 2, 2), (1, 3, 3, 2), (1, 3, 2), (1, 3, 2)"),
        ({"visibs": np.ones((1, 3, 3))}, "(1, 3, 2, 2), (1, 3, 2, 2), (1, 3, 3), (1, 3, 2)"),
        ({"valids": np.ones((1, 3, 3))}, "(1, 3, 2, 2), (1, 3, 2, 2), (1, 3, 2), (1, 3, 3)"),
    ]:
        with pytest.raises(ValueError, match=full_match(expected + shapes)):
            compute_ate(**(ate | bad))


def test_a_single_valid_entry_is_the_whole_score():
    trajs_e, trajs_g = _errors_along_x([0, 0.5, 30])
    valids = np.array([[[1], [1], [0]]], dtype=np.float32)  # frame 1 is the only valid one after the query
    metrics = compute_pips_metrics(trajs_e, trajs_g, valids, H=256, W=256)
    assert metrics["d_1"] == 100.0 and metrics["d_avg"] == 100.0
    assert metrics["survival"] == 100.0  # the invalid frame 2 kills nothing
    assert metrics["median_l2"] == pytest.approx(0.25)  # median of 0 and 0.5


def test_tapvid_occlusion_flags_may_be_numbers():
    args = list(_toy_tapvid())
    as_bool = compute_tapvid_metrics(*args, query_mode="strided")
    args[1], args[3] = args[1].astype(np.int64), args[3].astype(np.float32)  # 1 = occluded
    as_numbers = compute_tapvid_metrics(*args, query_mode="strided")
    assert as_numbers.keys() == as_bool.keys()
    for name in as_bool:
        np.testing.assert_array_equal(as_numbers[name], as_bool[name], err_msg=name)


def test_a_video_with_nothing_to_evaluate_gets_nan_quietly():
    # the only point is queried at the last frame: 'first' mode has no frame after it
    query_points = np.array([[[4.0, 10.0, 10.0]]])
    gt_occluded = np.zeros((1, 1, 5), dtype=bool)
    gt_tracks = np.full((1, 1, 5, 2), 10.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics = compute_tapvid_metrics(
            query_points, gt_occluded, gt_tracks, gt_occluded, gt_tracks, "first"
        )
    assert all(np.isnan(value).all() for value in metrics.values())


def test_tapvid_shape_and_query_frame_errors_say_which_input():
    args = list(_toy_tapvid())  # b, n, t = 1, 1, 5
    wrong = {
        0: ("query_points", (1, 1, 3), np.zeros((1, 1, 2))),
        3: ("pred_occluded", (1, 1, 5), np.zeros((1, 1, 4), dtype=bool)),
        2: ("gt_tracks", (1, 1, 5, 2), np.zeros((1, 1, 5, 3))),
        4: ("pred_tracks", (1, 1, 5, 2), np.zeros((2, 1, 5, 2))),
    }
    for index, (name, shape, value) in wrong.items():
        bad = args.copy()
        bad[index] = value
        message = f"{name} must have shape {shape} to match gt_occluded, got {value.shape}"
        with pytest.raises(ValueError, match=full_match(message)):
            compute_tapvid_metrics(*bad, query_mode="first")
    args[0] = np.array([[[5.0, 0.0, 0.0]]])
    with pytest.raises(ValueError, match=full_match("query frames must lie in [0, 5), got 5..5")):
        compute_tapvid_metrics(*args, query_mode="strided")


def test_queries_have_the_documented_types_whatever_the_input():
    gt_occluded = np.array([[1, 0, 0], [0, 0, 1]], dtype=np.uint8)  # 1 = occluded
    gt_tracks = np.arange(12, dtype=np.float64).reshape(2, 3, 2)
    for queries in (
        sample_queries_first(gt_occluded, gt_tracks),
        sample_queries_strided(gt_occluded, gt_tracks),
    ):
        assert queries.query_points.dtype == np.float32 and queries.gt_tracks.dtype == np.float32
        assert queries.gt_occluded.dtype == bool and queries.point_index.dtype == np.int64
    first = sample_queries_first(gt_occluded, gt_tracks)
    np.testing.assert_array_equal(first.point_index, [0, 1])
    np.testing.assert_array_equal(first.query_points[0], [[1, 3, 2], [0, 7, 6]])  # t, y, x
    np.testing.assert_array_equal(first.gt_occluded[0], gt_occluded.astype(bool))


def test_strided_queries_every_fifth_frame_by_default():
    gt_occluded = np.zeros((1, 12), dtype=bool)
    gt_tracks = np.zeros((1, 12, 2), dtype=np.float32)
    np.testing.assert_array_equal(
        sample_queries_strided(gt_occluded, gt_tracks).query_points[0, :, 0], [0, 5, 10]
    )
    every = sample_queries_strided(gt_occluded, gt_tracks, query_stride=1)
    np.testing.assert_array_equal(every.query_points[0, :, 0], np.arange(12))
