import cv2
import numpy as np
import pytest

import make_synthetic_dataset
from datasets.synthetic import (
    BACKGROUND_ID,
    SyntheticClips,
    make_scene,
    render_frame,
    scene_tracks,
    select_points,
    visible_in,
    write_sequence,
)

T, H, W = 12, 96, 128


def _colours(img: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Bilinear colour (N,3 float) of an H,W,3 image at N,2 positions."""
    mx = xy[:, 0].reshape(-1, 1).astype(np.float32)
    my = xy[:, 1].reshape(-1, 1).astype(np.float32)
    return cv2.remap(img, mx, my, cv2.INTER_LINEAR)[:, 0].astype(np.float32)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A few tiny v1.2 sequences written to disk, with the scenes they came from."""
    out = []
    for seed in range(3):
        scene = make_scene(T, H, W, np.random.default_rng(seed), num_points=800)
        seq_dir = tmp_path_factory.mktemp(f"seq{seed}")
        write_sequence(scene, seq_dir, jpeg_quality=95)
        out.append((scene, seq_dir))
    return out


def test_tracks_follow_the_pixels(written):
    """Visible points keep their frame-0 colour; points marked occluded (in frame, valid) show another."""
    diffs_vis, diffs_occ = [], []
    for _, seq_dir in written:
        anno = np.load(seq_dir / "anno.npz")
        trajs, visibs, valids = anno["trajs_2d"], anno["visibs"], anno["valids"]
        frames = [cv2.imread(str(seq_dir / "rgbs" / f"rgb_{t:05d}.jpg")) for t in range(T)]
        start = _colours(frames[0], trajs[0])
        seen0 = visibs[0] > 0
        for t in range(1, T):
            diff = np.abs(_colours(frames[t], trajs[t]) - start).mean(-1)  # N
            x, y = trajs[t, :, 0], trajs[t, :, 1]
            in_frame = (x >= 0) & (x <= W - 1) & (y >= 0) & (y <= H - 1)
            diffs_vis.append(diff[seen0 & (visibs[t] > 0)])
            diffs_occ.append(diff[seen0 & (visibs[t] == 0) & (valids[t] > 0) & in_frame])
    vis, occ = np.concatenate(diffs_vis), np.concatenate(diffs_occ)
    assert len(vis) > 1000 and len(occ) > 100
    assert np.median(vis) < 8 and np.mean(vis > 25) < 0.06
    assert np.median(occ) > 30 and np.mean(occ > 25) > 0.8


def test_v12_files_and_geometry(written):
    scene, seq_dir = written[0]
    assert sorted(p.name for p in (seq_dir / "rgbs").iterdir()) == [f"rgb_{t:05d}.jpg" for t in range(T)]
    mask = cv2.imread(str(seq_dir / "masks" / "mask_00000.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (H, W) and mask.dtype == np.uint8 and mask.min() >= BACKGROUND_ID
    np.testing.assert_array_equal(mask, render_frame(scene, 0)[1])

    anno = np.load(seq_dir / "anno.npz")
    trajs, visibs, valids = anno["trajs_2d"], anno["visibs"], anno["valids"]
    N = trajs.shape[1]
    assert trajs.shape == (T, N, 2) and trajs.dtype == np.float32 and N > 700
    assert visibs.shape == valids.shape == (T, N)
    assert np.all(visibs <= valids)  # visible implies valid
    np.testing.assert_array_equal(np.load(seq_dir / "info.npz")["trajs_3d"], [T, N, 3])
    # trajs_3d projects back onto trajs_2d through the intrinsics (identity extrinsics)
    xyz, K = anno["trajs_3d"], anno["intrinsics"]
    assert K.shape == (T, 3, 3) and np.allclose(anno["extrinsics"], np.eye(4))
    u = K[:, None, 0, 0] * xyz[..., 0] / xyz[..., 2] + K[:, None, 0, 2]
    v = K[:, None, 1, 1] * xyz[..., 1] / xyz[..., 2] + K[:, None, 1, 2]
    np.testing.assert_allclose(np.stack([u, v], -1), trajs, atol=1e-3)


def test_invalid_points_are_near_objects_not_drawn(written):
    """valids=0 only for objects that passed the near plane; then they are not drawn and not visible."""
    found = False
    for scene, seq_dir in written:
        anno = np.load(seq_dir / "anno.npz")
        tracks = scene_tracks(scene)
        invalid = anno["valids"] == 0
        assert np.all(anno["visibs"][invalid] == 0)
        assert np.all(tracks.layer_ids[invalid.any(0)] != BACKGROUND_ID)
        for t, n in zip(*np.nonzero(invalid)):
            found = True
            assert tracks.depths[t, n] < 4.0
            assert not np.any(render_frame(scene, int(t))[1] == tracks.layer_ids[n])
    assert found


def test_v10_schema_has_three_states(tmp_path, written):
    scene, v12_dir = written[0]
    write_sequence(scene, tmp_path, schema="v1.0", jpeg_quality=95)
    anno10 = np.load(tmp_path / "annotations.npz")
    anno12 = np.load(v12_dir / "anno.npz")
    vis = anno10["visibilities"]
    assert set(np.unique(vis)) == {0.0, 1.0, 2.0}
    np.testing.assert_array_equal(vis == 1, anno12["visibs"] > 0)
    np.testing.assert_array_equal(vis < 2, anno12["valids"] > 0)
    np.testing.assert_array_equal(anno10["trajs_2d"], anno12["trajs_2d"])
    assert not (tmp_path / "anno.npz").exists()
    with pytest.raises(ValueError, match="v1.1"):
        write_sequence(scene, tmp_path, schema="v1.1")


def test_scene_is_a_function_of_the_generator():
    a = make_scene(4, 48, 64, np.random.default_rng(7), num_points=100)
    b = make_scene(4, 48, 64, np.random.default_rng(7), num_points=100)
    c = make_scene(4, 48, 64, np.random.default_rng(8), num_points=100)
    np.testing.assert_array_equal(render_frame(a, 3)[0], render_frame(b, 3)[0])
    np.testing.assert_array_equal(scene_tracks(a).trajs, scene_tracks(b).trajs)
    assert not np.array_equal(render_frame(a, 3)[0], render_frame(c, 3)[0])
    assert 4 <= len(a.layers) <= 13  # background + 3..12 objects
    with pytest.raises(ValueError, match="16x16"):
        make_scene(4, 8, 64, np.random.default_rng(0))


def test_visible_in_by_hand():
    inst = np.ones((4, 5), np.uint8)
    inst[1:3, 1:3] = 2
    trajs = np.array([[1.2, 1.4], [0.0, 0.0], [1.6, 1.6], [4.4, 1.0], [-0.1, 2.0], [2.0, 2.0]], np.float32)
    valids = np.array([1, 1, 1, 1, 1, 0], np.float32)
    ids = np.array([2, 1, 1, 1, 1, 2])
    # on its object; bg; bg point hidden by object 2; x > W-1; x < 0; invalid
    np.testing.assert_array_equal(visible_in(inst, trajs, valids, ids), [1, 1, 0, 0, 0, 0])


def test_visible_in_rounds_halves_up_to_the_pixel_that_holds_them():
    # columns 0..2 show object 2, columns 3..5 the background: x = 2.5 lies in pixel 3's span [2.5, 3.5),
    # x = 2.49 in pixel 2's; halves round up in y too (y = 0.5 is row 1, the object's row)
    inst = np.ones((3, 6), np.uint8)
    inst[:, :3] = 2
    inst[0, :] = 1
    trajs = np.array([[2.5, 1.0], [2.49, 1.0], [1.5, 1.0], [1.0, 0.5], [1.0, 0.49]], np.float32)
    valids = np.ones(5, np.float32)
    ids = np.full(5, 2)
    np.testing.assert_array_equal(visible_in(inst, trajs, valids, ids), [0, 1, 1, 1, 0])


def test_visible_in_the_frame_is_closed_at_the_last_pixel_centres():
    # W=5, H=4, all background: [0, 4] x [0, 3] is inside, edges included; a hundredth past them is not
    inst = np.ones((4, 5), np.uint8)
    trajs = np.array([[4.0, 3.0], [4.0, 0.0], [0.0, 3.0], [4.01, 3.0], [2.0, 3.01], [-0.01, 1.0]], np.float32)
    valids = np.ones(6, np.float32)
    ids = np.ones(6, int)
    np.testing.assert_array_equal(visible_in(inst, trajs, valids, ids), [1, 1, 1, 0, 0, 0])


def test_select_points_spreads_over_layers():
    layer_ids = np.array([1] * 900 + [2] * 90 + [3] * 10)
    candidates = np.ones(1000, bool)
    candidates[::7] = False
    picked = select_points(candidates, layer_ids, 60, np.random.default_rng(0))
    assert len(picked) == len(set(picked)) == 60
    assert candidates[picked].all()
    counts = np.bincount(layer_ids[picked], minlength=4)[1:]
    assert counts[0] < 45 and counts[2] >= 2  # sqrt weighting: bg share ~ 30/(30+9.5+3)
    assert len(select_points(np.zeros(5, bool), layer_ids[:5], 3, np.random.default_rng(0))) == 0


def test_synthetic_clips_deterministic_and_well_formed():
    ds = SyntheticClips(S=6, N=32, crop_size=(64, 96), length=5, seed=3)
    a, b = ds[2], ds[2]
    assert a.rgbs.shape == (6, 64, 96, 3) and a.rgbs.dtype == np.uint8
    assert a.trajs.shape == (6, 32, 2) and a.visibs.shape == a.valids.shape == (6, 32)
    for name in ("rgbs", "trajs", "visibs", "valids"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert np.all(a.visibs[0] == 1) and np.all(a.valids[0] == 1)
    assert np.all(a.visibs <= a.valids)
    assert not np.array_equal(ds[1].trajs, a.trajs)
    ds.set_epoch(1)
    assert not np.array_equal(ds[2].trajs, a.trajs)
    ds.set_epoch(0)
    np.testing.assert_array_equal(ds[2].trajs, a.trajs)
    assert not np.array_equal(
        SyntheticClips(S=6, N=32, crop_size=(64, 96), length=5, seed=4)[2].trajs, a.trajs
    )
    with pytest.raises(IndexError):
        ds[5]


def test_streamed_clips_visibility_matches_their_pixels():
    """In the clips streamed for training, a point marked visible shows its frame-0 colour and a point in
    the frame marked occluded shows another; points outside the frame are never visible."""
    S, (H, W) = 8, (96, 128)
    ds = SyntheticClips(S=S, N=128, crop_size=(H, W), length=3, seed=2)
    diffs_vis, diffs_occ, outside = [], [], 0
    for clip in (ds[i] for i in range(len(ds))):
        frames = clip.rgbs  # S,H,W,3
        start = _colours(frames[0], clip.trajs[0])
        x, y = clip.trajs[..., 0], clip.trajs[..., 1]
        in_frame = (x >= 0) & (x <= W - 1) & (y >= 0) & (y <= H - 1)  # S,N
        assert np.all(clip.visibs[~in_frame] == 0)
        outside += (~in_frame).sum()
        for t in range(1, S):
            diff = np.abs(_colours(frames[t], clip.trajs[t]) - start).mean(-1)  # N
            diffs_vis.append(diff[clip.visibs[t] > 0])
            diffs_occ.append(diff[(clip.visibs[t] == 0) & (clip.valids[t] > 0) & in_frame[t]])
    vis, occ = np.concatenate(diffs_vis), np.concatenate(diffs_occ)
    assert len(vis) > 1000 and len(occ) > 50 and outside > 50
    assert np.median(vis) < 8 and np.mean(vis > 25) < 0.03
    assert np.median(occ) > 30 and np.mean(occ > 25) > 0.8


def test_make_synthetic_dataset_script(tmp_path):
    make_synthetic_dataset.main(
        make_synthetic_dataset.SyntheticConfig(
            out=str(tmp_path),
            splits=("train", "val"),
            num_sequences=2,
            num_frames=3,
            height=32,
            width=48,
            num_points=50,
        )
    )
    for split in ("train", "val"):
        for i in range(2):
            seq = tmp_path / split / f"scene_{i:04d}"
            assert (seq / "anno.npz").is_file() and (seq / "masks" / "mask_00002.png").is_file()
    first = [
        cv2.imread(str(tmp_path / p / "rgbs/rgb_00000.jpg")) for p in ("train/scene_0000", "val/scene_0000")
    ]
    assert not np.array_equal(first[0], first[1])
    other = cv2.imread(str(tmp_path / "train/scene_0001/rgbs/rgb_00000.jpg"))
    assert not np.array_equal(first[0], other)


def test_clips_photometric_augmentation() -> None:
    plain = SyntheticClips(S=4, N=8, crop_size=(64, 64), length=6, seed=5)
    aug = SyntheticClips(S=4, N=8, crop_size=(64, 64), length=6, seed=5, use_augs=True)
    a, b = aug[1], aug[1]
    np.testing.assert_array_equal(a.rgbs, b.rgbs)  # deterministic per index
    assert a.rgbs.shape == plain[1].rgbs.shape and a.rgbs.dtype == np.uint8
    assert sum(not np.array_equal(aug[i].rgbs, plain[i].rgbs) for i in range(6)) >= 3
