import logging
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from torch.utils.data import DataLoader

import datasets.pointodyssey
from datasets.pointodyssey import (
    PointOdysseyDataset,
    PointOdysseyFullSeq,
    TrackAnnotations,
    boundary_edges,
    enough_visible,
    farthest_point_sample,
    fill_mask_holes,
    inspect_sequence,
    invalidate_nonfinite,
    list_sequences,
    load_rgbs,
    load_tracks,
    motion_ok,
    outside,
)
from datasets.sample import UnreadableSequence
from datasets.synthetic import make_scene, write_sequence

T, H, W = 12, 96, 128


def _write_split(root: Path, schema: str, count: int = 2, frames: int = T) -> None:
    for i in range(count):
        scene = make_scene(frames, H, W, np.random.default_rng(i), num_points=1500)
        write_sequence(scene, root / "train" / f"seq{i}", schema=schema)


@pytest.fixture(scope="module")
def pod_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pod")
    _write_split(root, "v1.2")
    return root


def _write_hand_sequence(seq_dir: Path, trajs: np.ndarray, visibs: np.ndarray, size=(H, W)) -> None:
    """A sequence with flat grey frames and hand-made v1.2 tracks (valids all 1)."""
    (seq_dir / "rgbs").mkdir(parents=True)
    for t in range(len(trajs)):
        cv2.imwrite(str(seq_dir / "rgbs" / f"rgb_{t:05d}.jpg"), np.full((*size, 3), 128, np.uint8))
    np.savez(seq_dir / "anno.npz", trajs_2d=trajs, visibs=visibs, valids=np.ones_like(visibs))


# ---- reading both schemas


def test_round_trip_both_schemas(tmp_path, pod_root):
    _write_split(tmp_path, "v1.0", count=1)
    seq12 = list_sequences(pod_root, "train").sequences[0]
    seq10 = list_sequences(tmp_path, "train").sequences[0]
    assert seq12.anno_path.name == "anno.npz" and seq10.anno_path.name == "annotations.npz"
    assert (seq12.num_frames, seq12.num_points) == (seq10.num_frames, seq10.num_points)
    assert seq12.num_frames == T and seq12.has_masks
    raw = np.load(seq12.anno_path)
    tracks12, tracks10 = load_tracks(seq12), load_tracks(seq10)
    np.testing.assert_array_equal(tracks12.trajs, raw["trajs_2d"])
    np.testing.assert_array_equal(tracks12.visibs, raw["visibs"])
    np.testing.assert_array_equal(tracks12.valids, raw["valids"])
    for name in ("trajs", "visibs", "valids"):
        assert getattr(tracks10, name).dtype == np.float32
        np.testing.assert_array_equal(getattr(tracks10, name), getattr(tracks12, name))
    assert (tracks10.valids == 0).any() and (tracks10.visibs == 0).any()
    ids = np.array([5, 0, 7])
    np.testing.assert_array_equal(load_tracks(seq12, ids).trajs, raw["trajs_2d"][ids])


def test_v10_visibilities_map_to_valids_and_visibs(tmp_path):
    seq = tmp_path / "test" / "a"
    _write_hand_sequence(seq, np.zeros((3, 3, 2), np.float16), np.zeros((3, 3)))
    (seq / "anno.npz").unlink()
    v = np.array([[0, 1, 2]] * 3, np.float16)
    np.savez(seq / "annotations.npz", trajs_2d=np.zeros((3, 3, 2), np.float16), visibilities=v)
    tracks = load_tracks(list_sequences(tmp_path, "test").sequences[0])
    assert tracks.trajs.dtype == np.float32
    np.testing.assert_array_equal(tracks.visibs[0], [0, 1, 0])
    np.testing.assert_array_equal(tracks.valids[0], [1, 1, 0])


def test_load_rgbs_is_rgb(tmp_path):
    img = np.zeros((4, 6, 3), np.uint8)
    img[..., 2] = 255  # red in BGR
    cv2.imwrite(str(tmp_path / "f.png"), img)
    rgbs = load_rgbs([tmp_path / "f.png", tmp_path / "f.png"], [1])
    assert rgbs.shape == (1, 4, 6, 3)
    np.testing.assert_array_equal(rgbs[0, 0, 0], [255, 0, 0])
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        load_rgbs([tmp_path / "nope.jpg"])


# ---- bad data


def test_bad_splits(tmp_path):
    with pytest.raises(FileNotFoundError, match="train"):
        list_sequences(tmp_path, "train")
    (tmp_path / "train" / "empty_seq").mkdir(parents=True)
    with pytest.raises(
        ValueError, match="has no readable sequence .1 skipped, e.g. sequence empty_seq: no anno"
    ):
        list_sequences(tmp_path, "train")


def test_missing_annotations_skipped_with_warning(tmp_path, caplog):
    _write_hand_sequence(tmp_path / "val" / "good", np.ones((3, 2, 2), np.float32), np.ones((3, 2)))
    (tmp_path / "val" / "broken" / "rgbs").mkdir(parents=True)
    with caplog.at_level(logging.WARNING):
        seqs, skipped = list_sequences(tmp_path, "val")
    assert [s.name for s in seqs] == ["good"]
    assert skipped == [f"sequence broken: no anno.npz or annotations.npz in {tmp_path / 'val' / 'broken'}"]
    assert len(caplog.records) == 1
    with pytest.raises(FileNotFoundError, match="broken"):
        inspect_sequence(tmp_path / "val" / "broken")


def _corrupt_split(root: Path) -> Path:
    """Three sequences; the annotations of the middle one truncated as by a failed copy."""
    _write_split(root, "v1.2", count=3)
    anno = root / "train" / "seq1" / "anno.npz"
    anno.write_bytes(anno.read_bytes()[:5000])
    return anno


def test_corrupt_annotations_leave_out_one_sequence(tmp_path, caplog):
    anno = _corrupt_split(tmp_path)
    with caplog.at_level(logging.WARNING):
        train = PointOdysseyDataset(tmp_path, "train", S=4, N=16, crop_size=(64, 96))
        full = PointOdysseyFullSeq(tmp_path, "train")
    for ds in (train, full):
        assert [s.name for s in ds.sequences] == ["seq0", "seq2"]
        (message,) = ds.skipped
        assert message.startswith(f"{anno}: not a readable .npz file")
    assert caplog.text.count(f"skipping {anno}: not a readable .npz file") == 2
    assert train[0].rgbs.shape == (4, 64, 96, 3) and full[1].name == "seq2"


def _spoil_frames(seq_dir: Path) -> None:
    for frame in (seq_dir / "rgbs").iterdir():
        frame.write_bytes(b"not a jpeg")


def test_sequence_unreadable_when_read_is_replaced_and_shared_by_workers(pod_root, tmp_path, caplog):
    _write_split(tmp_path, "v1.2", count=2)
    make = dict(S=4, N=16, crop_size=(64, 96), seed=3)
    ds = PointOdysseyDataset(tmp_path, "train", **make)
    clean = [PointOdysseyDataset(pod_root, "train", **make)[i] for i in range(len(ds))]
    _spoil_frames(tmp_path / "train" / "seq0")
    items = [
        item
        for batch in DataLoader(ds, batch_size=2, num_workers=2, collate_fn=list)  # a worker finds seq0 bad
        for item in batch
    ]
    assert ds.unreadable.found() == ["seq0"]  # seen from the main process
    for item in items:
        assert item.rgbs.shape == (4, 64, 96, 3) and item.rgbs.max() > 0
    # items of seq1 (the second half of the index) are those of the intact copy
    half = len(ds) // 2
    for item, good in zip(items[half:], clean[half:]):
        np.testing.assert_array_equal(item.trajs, good.trajs)
    # knowing seq0 is bad changes no draw: a fresh reader that has to find out gives the same items
    fresh = PointOdysseyDataset(tmp_path, "train", **make)
    with caplog.at_level(logging.WARNING):
        np.testing.assert_array_equal(fresh[0].trajs, items[0].trajs)
        np.testing.assert_array_equal(fresh[1].trajs, items[1].trajs)
    assert caplog.text.count("skipping seq0: cannot read image") == 1
    _spoil_frames(tmp_path / "train" / "seq1")
    with pytest.raises(ValueError, match="no readable sequence left .unreadable: seq0, seq1."):
        fresh[half]


def test_full_sequence_unreadable_when_read_raises(tmp_path):
    _write_split(tmp_path, "v1.2", count=2)
    ds = PointOdysseyFullSeq(tmp_path, "train")
    _spoil_frames(tmp_path / "train" / "seq0")
    with pytest.raises(
        UnreadableSequence, match="sequence seq0: cannot read image .*seq0/rgbs/rgb_00000.jpg"
    ):
        ds[0]
    anno = tmp_path / "train" / "seq1" / "anno.npz"
    with zipfile.ZipFile(anno) as zf:
        member = zf.getinfo("trajs_2d.npy")
    data = bytearray(anno.read_bytes())
    middle = member.header_offset + member.compress_size // 2
    data[middle : middle + 64] = bytes(64)  # the array headers stay intact, the track data does not
    anno.write_bytes(bytes(data))
    with pytest.raises(UnreadableSequence, match=f"cannot read {anno}"):
        ds[1]


def test_frames_must_match_annotation_length(tmp_path):
    seq = tmp_path / "s1"
    _write_hand_sequence(seq, np.ones((4, 2, 2), np.float32), np.ones((4, 2)))
    (seq / "rgbs" / "rgb_00002.jpg").unlink()
    with pytest.raises(ValueError, match=r"s1: anno.npz has 4 frames .*\(missing e.g. \['rgb_00002.jpg'\]"):
        inspect_sequence(seq)
    cv2.imwrite(str(seq / "rgbs" / "rgb_00002.jpg"), np.zeros((H, W, 3), np.uint8))
    cv2.imwrite(str(seq / "rgbs" / "rgb_00004.jpg"), np.zeros((H, W, 3), np.uint8))
    with pytest.raises(ValueError, match=r"has 5 \(extra e.g. \['rgb_00004.jpg'\]\)"):
        inspect_sequence(seq)
    (seq / "rgbs" / "rgb_00004.jpg").unlink()
    assert inspect_sequence(seq).num_frames == 4


def test_mismatched_arrays_and_keys(tmp_path):
    seq = tmp_path / "s2"
    _write_hand_sequence(seq, np.ones((4, 2, 2), np.float32), np.ones((4, 2)))
    np.savez(seq / "anno.npz", trajs_2d=np.ones((4, 2, 2)), visibs=np.ones((4, 3)), valids=np.ones((4, 2)))
    with pytest.raises(ValueError, match=r"s2: anno.npz visibs has shape \(4, 3\)"):
        inspect_sequence(seq)
    np.savez(seq / "anno.npz", trajs_2d=np.ones((4, 2, 2)), occluded=np.ones((4, 2)))
    with pytest.raises(ValueError, match="visibilities"):
        inspect_sequence(seq)
    (seq / "anno.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="anno.npz: not a readable"):
        inspect_sequence(seq)


# ---- filters on hand-made tracks


def test_invalidate_nonfinite():
    trajs = np.array([[[1, 2], [np.nan, 3]], [[np.inf, 0], [4, 5]]], np.float32)
    ones = np.ones((2, 2), np.float32)
    out = invalidate_nonfinite(TrackAnnotations(trajs, ones, ones))
    np.testing.assert_array_equal(out.trajs, [[[1, 2], [0, 0]], [[0, 0], [4, 5]]])
    np.testing.assert_array_equal(out.visibs, [[1, 0], [0, 1]])
    np.testing.assert_array_equal(out.valids, [[1, 0], [0, 1]])


def test_outside_bounds():
    trajs = np.array([[[1, 1], [0.9, 5], [126, 94], [126.1, 5], [5, 94.5]]], np.float32)
    np.testing.assert_array_equal(outside(trajs, 1, W - 2, H - 2)[0], [False, True, False, True, True])


def test_enough_visible():
    S = 9  # needs >= 3 visible frames
    vis = np.ones((S, 4), np.float32)
    val = np.ones((S, 4), np.float32)
    vis[1, 1] = 0  # invisible at frame 1
    vis[2:, 2] = 0  # visible only at frames 0,1
    val[0, 3] = 0  # invalid at frame 0
    np.testing.assert_array_equal(enough_visible(vis, val), [True, False, False, False])


def test_motion_limits():
    S, N = 6, 4
    trajs = np.zeros((S, N, 2), np.float32)
    trajs[:, 0, 0] = np.arange(S) * 10  # steady 10 px/frame: fine
    trajs[3:, 1, 0] = 60  # a 60 px jump in a 128-px frame: speed 0.47 > 0.4
    trajs[:, 2, 0] = np.arange(S) * 45  # steady 45 px/frame: speed 0.35 ok, no accel
    trajs[3:, 3, 1] = 15  # 15 px step: speed 0.12 ok, but jerk 3*15/128 = 0.35 > 0.1
    np.testing.assert_array_equal(motion_ok(trajs, H, W), [True, False, True, False])
    assert motion_ok(trajs[:2], H, W).tolist() == [True, True, True, True]  # too short for jerk


def test_farthest_point_sample_spreads_without_duplicates():
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0, 0, 0], [100, 0, 0, 0], [0, 100, 0, 0], [0, 0, 50, 50]], np.float32)
    feats = np.repeat(centres, 25, 0) + rng.normal(size=(100, 4))
    picked = farthest_point_sample(feats, 4, rng)
    assert sorted(picked // 25) == [0, 1, 2, 3]
    picked = farthest_point_sample(feats[:10], 30, rng)
    assert sorted(picked) == list(range(10))


def test_boundary_edges_and_hole_filling():
    mask = np.ones((80, 80), np.uint8)
    mask[:, 40:] = 2
    edges = boundary_edges(mask, 1)
    assert edges[10, 39] > 0 and edges[10, 40] > 0
    assert edges[10, 5] == 0 and edges[10, 75] == 0
    assert boundary_edges(mask, 3)[10, 37] > 0 and edges[10, 37] == 0
    holed = mask.copy()
    holed[:, 8:10] = 0  # a thin 160-pixel hole (fog) through region 1
    edges = boundary_edges(holed, 1)
    assert edges[20, 7] == 0 and edges[20, 11] == 0  # hole rims are not instance boundaries
    np.testing.assert_array_equal(fill_mask_holes(holed), mask)  # > 128 zeros: 7x7 median fills it
    small = mask.copy()
    small[5:10, 2:6] = 0  # only 20 pixels: left alone
    np.testing.assert_array_equal(fill_mask_holes(small), small)


# ---- training clips


def test_dataset_clip_index(pod_root):
    ds = PointOdysseyDataset(pod_root, "train", S=4, N=16, strides=(1, 2), clip_step=3, crop_size=(64, 96))
    # per 12-frame sequence: stride 1 starts 0,3,6 (9+4 > 12); stride 2 starts 0,3 (6+8 > 12)
    assert ds.clips.tolist() == [
        [q, s, d] for q in (0, 1) for s, d in ((0, 1), (3, 1), (6, 1), (0, 2), (3, 2))
    ]
    quick = PointOdysseyDataset(pod_root, "train", S=4, N=16, quick=True)  # strides 1,2,4, clip_step 2
    assert [s.name for s in quick.sequences] == ["seq0"] and len(quick) == 5 + 3
    with pytest.raises(ValueError, match="long enough"):
        PointOdysseyDataset(pod_root, "train", S=8, strides=(2,))
    with pytest.raises(ValueError, match="S >= 2"):
        PointOdysseyDataset(pod_root, "train", S=1)


def test_dataset_samples(pod_root):
    ds = PointOdysseyDataset(pod_root, "train", S=6, N=48, crop_size=(64, 96), seed=1)
    a = ds[7]
    assert a.rgbs.shape == (6, 64, 96, 3) and a.rgbs.dtype == np.uint8
    assert a.trajs.shape == (6, 48, 2) and a.trajs.dtype == np.float32
    real = a.valids.sum(0) > 0
    n = int(real.sum())
    assert n >= 24  # req_full=False accepts N//2
    assert np.all(real[:n]) and np.all(a.trajs[:, n:] == 0) and np.all(a.visibs[:, n:] == 0)
    assert np.all(a.visibs[:2, :n] == 1)  # visible at frames 0 and 1
    x, y = a.trajs[0, :n, 0], a.trajs[0, :n, 1]
    assert np.all((x >= 1) & (x <= 96 - 2) & (y >= 1) & (y <= 64 - 2))
    assert len(np.unique(a.trajs[0, :n], axis=0)) == n  # no duplicate points
    b = ds[7]
    np.testing.assert_array_equal(a.trajs, b.trajs)
    np.testing.assert_array_equal(a.rgbs, b.rgbs)
    ds.set_epoch(3)
    assert not np.array_equal(ds[7].trajs, a.trajs)


def test_req_full_and_exhausted_retries(pod_root):
    # about 400-800 points per clip survive the filters at 64x96
    strict = PointOdysseyDataset(
        pod_root, "train", S=4, N=1000, crop_size=(64, 96), req_full=True, max_tries=3
    )
    with pytest.raises(RuntimeError, match="3 clips in a row failed the filters .min 1000 points"):
        strict[0]
    relaxed = PointOdysseyDataset(pod_root, "train", S=4, N=1000, crop_size=(64, 96))
    sample = relaxed[0]
    n = int((sample.valids.sum(0) > 0).sum())
    assert 500 <= n < 1000 and np.all(sample.trajs[:, n:] == 0)


def test_use_augs_calls_augment_clip(pod_root, monkeypatch):
    calls = []

    def fake_augment_clip(rgbs, trajs, visibs, valids, crop_size, rng):
        calls.append((rgbs.shape, trajs.shape, crop_size))
        h, w = crop_size
        return rgbs[:, :h, :w].copy(), trajs, visibs, valids

    monkeypatch.setattr(datasets.pointodyssey, "augment_clip", fake_augment_clip)
    ds = PointOdysseyDataset(pod_root, "train", S=4, N=16, crop_size=(64, 96), use_augs=True)
    sample = ds[0]
    assert calls and calls[0][0] == (4, H, W, 3) and calls[0][2] == (64, 96)
    assert sample.rgbs.shape == (4, 64, 96, 3)


def test_augmented_samples(pod_root):
    ds = PointOdysseyDataset(pod_root, "train", S=6, N=32, crop_size=(64, 96), use_augs=True, seed=2)
    for i in (0, 9):
        a = ds[i]
        assert a.rgbs.shape == (6, 64, 96, 3) and a.trajs.shape == (6, 32, 2)
        n = int((a.valids.sum(0) > 0).sum())
        assert n >= 16 and np.all(a.visibs[:2, :n] == 1)
        np.testing.assert_array_equal(ds[i].rgbs, a.rgbs)


# ---- full sequences


def test_full_sequence_filters_by_hand(tmp_path):
    S = 10
    trajs = np.full((S, 6, 2), 20.0, np.float32)
    visibs = np.ones((S, 6), np.float32)
    trajs[:, 1] = 40  # kept
    visibs[0, 2] = 0  # invisible at frame 0: dropped
    trajs[3, 3] = np.nan  # NaN at one frame: kept, that frame invalid
    trajs[2:7, 4, 0] = -10  # out of frame for 5 frames: 5 < 8 visible frames, dropped
    trajs[5:, 5, 0] = 600  # a 580 px jump inside the frame: > 512, dropped
    _write_hand_sequence(tmp_path / "test" / "hand", trajs, visibs, size=(48, 640))
    item = PointOdysseyFullSeq(tmp_path, "test", N=256)[0]
    assert item.name == "hand" and item.image_hw == (48, 640)
    assert len(item.frames) == S and item.frames[3].name == "rgb_00003.jpg"
    assert item.trajs.shape == (S, 3, 2)  # points 0, 1, 3
    np.testing.assert_array_equal(item.trajs[0, :, 0], [20, 40, 20])
    np.testing.assert_array_equal(item.valids[:, 2], [1, 1, 1, 0, 1, 1, 1, 1, 1, 1])
    np.testing.assert_array_equal(item.visibs[:, 2], item.valids[:, 2])
    np.testing.assert_array_equal(item.trajs[3, 2], [0, 0])
    assert item.trajs.dtype == item.visibs.dtype == item.valids.dtype == np.float32

    trajs[:, :, 0] = 700  # everything outside a 640-wide frame
    _write_hand_sequence(tmp_path / "test2" / "gone", trajs, visibs, size=(48, 640))
    with pytest.raises(ValueError, match="sequence gone: no track"):
        PointOdysseyFullSeq(tmp_path, "test2")[0]


def test_full_sequence_linspace_selection(pod_root):
    ds = PointOdysseyFullSeq(pod_root, "train", N=50)
    item = ds[1]
    all_points = PointOdysseyFullSeq(pod_root, "train", N=10**6)[1]
    n = all_points.trajs.shape[1]
    idx = np.linspace(0, n - 1, 50).astype(np.int32)
    np.testing.assert_array_equal(item.trajs, all_points.trajs[:, idx])
    assert item.trajs.shape == (T, 50, 2) and len(ds) == 2
    assert np.all(item.visibs[0] == 1) and np.all((item.visibs * item.valids).sum(0) >= 8)
    frames = load_rgbs(item.frames, [0, 5])
    assert frames.shape == (2, H, W, 3)


def test_points_far_outside_the_frame_become_invalid(tmp_path):
    # crop = frame size (64x96), so cropping and resizing leave the tracks as written. Official rule: a point
    # is invisible outside [1, W-2] x [1, H-2], and invalid (not supervised) only beyond 64 px outside it
    S, H, W = 8, 64, 96
    t = np.arange(S, dtype=np.float32)
    trajs = np.zeros((S, 5, 2), np.float32)
    trajs[:, 0] = np.stack([60 + 15 * t, np.full(S, 30.0)], -1)  # x 165 > W + 64 at frame 7
    trajs[:, 1] = [20.0, 20.0]  # still
    trajs[:, 2] = np.stack([np.full(S, 40.0), 50 - 17 * t], -1)  # y -69 < -64 at frame 7
    trajs[:, 3] = np.stack([55 + 15 * t, np.full(S, 10.0)], -1)  # x = W + 64 exactly at frame 7: still valid
    trajs[:, 4] = np.stack([np.full(S, 70.0), 20 + 17 * t], -1)  # y 139 > H + 64 at frame 7
    _write_hand_sequence(tmp_path / "train" / "hand", trajs, np.ones((S, 5), np.float32), size=(H, W))
    ds = PointOdysseyDataset(tmp_path, "train", S=S, N=5, strides=(1,), crop_size=(H, W))
    far = np.ones((S, 3), np.float32)
    far[7] = 0
    for epoch in range(4):  # just_crop or just_resize, both the identity here
        ds.set_epoch(epoch)
        clip = ds[0]
        order = [int(np.flatnonzero(np.all(clip.trajs[0] == trajs[0, n], axis=-1))[0]) for n in range(5)]
        visibs, valids, got = clip.visibs[:, order], clip.valids[:, order], clip.trajs[:, order]
        np.testing.assert_array_equal(valids[:, [0, 2, 4]], far)
        np.testing.assert_array_equal(valids[:, [1, 3]], 1)
        np.testing.assert_array_equal(visibs[:, 1], 1)
        for n in (0, 2, 3, 4):  # in the frame (1 px from the border) at frames 0..2 only
            np.testing.assert_array_equal(visibs[:, n], [1, 1, 1, 0, 0, 0, 0, 0])
        # the tracks are clamped to 64 px around the frame
        clamped = [[W + 64, 30], [40, -64], [W + 64, 10], [70, H + 64]]
        np.testing.assert_allclose(got[7, [0, 2, 3, 4]], clamped)
        np.testing.assert_allclose(got[:7], trajs[:7])
