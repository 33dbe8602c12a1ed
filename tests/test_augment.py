import numpy as np
import pytest

from datasets.augment import (
    augment_clip,
    erase_occluders,
    flip_clip,
    just_crop,
    just_resize,
    photometric_clip,
    resize_clip,
    reverse_time,
    spatial_augs,
)

RAMP_X, RAMP_Y = 4, 5  # grey levels per source pixel of the position-coding image


def ramp_clip(S: int, H: int = 48, W: int = 64) -> np.ndarray:
    """Frames whose red channel is 4x and green channel 5y: colour decodes back to position."""
    ys, xs = np.mgrid[0:H, 0:W]
    frame = np.stack([RAMP_X * xs, RAMP_Y * ys, np.full_like(xs, 128)], axis=-1).astype(np.uint8)
    return np.repeat(frame[None], S, axis=0)  # S,H,W,3


def decode_positions(rgbs: np.ndarray, trajs: np.ndarray) -> np.ndarray:
    """Bilinearly sample each frame at the track positions and decode the source x,y (S,N,2)."""
    S, H, W, _ = rgbs.shape
    out = np.zeros(trajs.shape, dtype=np.float64)
    for t in range(S):
        x, y = trajs[t, :, 0], trajs[t, :, 1]
        x0 = np.clip(np.floor(x).astype(int), 0, W - 2)
        y0 = np.clip(np.floor(y).astype(int), 0, H - 2)
        fx, fy = (x - x0)[:, None], (y - y0)[:, None]
        f = rgbs[t].astype(np.float64)
        value = (
            f[y0, x0] * (1 - fx) * (1 - fy)
            + f[y0, x0 + 1] * fx * (1 - fy)
            + f[y0 + 1, x0] * (1 - fx) * fy
            + f[y0 + 1, x0 + 1] * fx * fy
        )  # N,3
        out[t] = value[:, :2] / [RAMP_X, RAMP_Y]
    return out


def interior_tracks(rng: np.random.Generator, S: int, N: int, H: int = 48, W: int = 64) -> np.ndarray:
    xy = rng.uniform([2, 2], [W - 3, H - 3], size=(S, N, 2))
    return xy.astype(np.float32)  # S,N,2


def test_resize_maps_tracks_onto_their_content():
    rng = np.random.default_rng(0)
    rgbs, trajs = ramp_clip(2), interior_tracks(rng, 2, 40)
    for size in [(96, 160), (30, 40), (48, 100)]:
        out, moved = resize_clip(rgbs, trajs, size)
        assert out.shape == (2, *size, 3)
        inside = (moved[..., 0] >= 1) & (moved[..., 0] <= size[1] - 2)
        inside &= (moved[..., 1] >= 1) & (moved[..., 1] <= size[0] - 2)
        err = np.abs(decode_positions(out, moved) - trajs)[inside]
        assert err.max() < 0.2, size


def test_resize_coordinate_convention_is_pixel_centres():
    trajs = np.array([[[0.0, 0.0], [63.0, 47.0], [31.5, 23.5]]], dtype=np.float32)
    _, out = just_resize(ramp_clip(1), trajs, (96, 128))
    # pixel 0 spans [-0.5, 0.5) in the source and [-0.5, 1.5) after doubling: centre 0.5
    np.testing.assert_allclose(out[0], [[0.5, 0.5], [126.5, 94.5], [63.5, 47.5]])


def test_flips_are_exact_and_involutive():
    rng = np.random.default_rng(1)
    rgbs = rng.integers(0, 256, size=(3, 20, 30, 3), dtype=np.uint8)
    trajs = rng.integers(0, [30, 20], size=(3, 50, 2)).astype(np.float32)
    t, n = np.meshgrid(np.arange(3), np.arange(50), indexing="ij")
    for horizontal in (True, False):
        out, moved = flip_clip(rgbs, trajs, horizontal)
        xi, yi = moved[..., 0].astype(int), moved[..., 1].astype(int)
        np.testing.assert_array_equal(moved, np.round(moved))
        src = rgbs[t, trajs[..., 1].astype(int), trajs[..., 0].astype(int)]
        np.testing.assert_array_equal(out[t, yi, xi], src)
        back, back_trajs = flip_clip(out, moved, horizontal)
        np.testing.assert_array_equal(back, rgbs)
        np.testing.assert_array_equal(back_trajs, trajs)
    _, moved = flip_clip(rgbs, np.array([[[0.0, 0.0]]] * 3, dtype=np.float32), horizontal=True)
    assert moved[0, 0].tolist() == [29.0, 0.0]


def test_just_crop_is_exact():
    rng = np.random.default_rng(2)
    rgbs = rng.integers(0, 256, size=(2, 40, 50, 3), dtype=np.uint8)
    trajs = rng.integers(0, [50, 40], size=(2, 30, 2)).astype(np.float32)
    out, moved = just_crop(rgbs, trajs, (20, 30), rng)
    assert out.shape == (2, 20, 30, 3)
    inside = (moved[..., 0] >= 0) & (moved[..., 0] < 30) & (moved[..., 1] >= 0) & (moved[..., 1] < 20)
    assert inside.any()
    t, n = np.nonzero(inside)
    src = rgbs[t, trajs[t, n, 1].astype(int), trajs[t, n, 0].astype(int)]
    np.testing.assert_array_equal(out[t, moved[t, n, 1].astype(int), moved[t, n, 0].astype(int)], src)


@pytest.mark.parametrize("seed", range(8))
def test_spatial_augs_keep_tracks_on_content(seed):
    rng = np.random.default_rng(seed)
    S, N, crop = 6, 200, (32, 48)
    rgbs, trajs = ramp_clip(S), interior_tracks(rng, S, N)
    visibs = np.ones((S, N), dtype=np.float32)
    out, moved = spatial_augs(rgbs, trajs, visibs, crop, rng)
    assert out.shape == (S, *crop, 3) and out.dtype == np.uint8 and moved.dtype == np.float32
    inside = (moved[..., 0] >= 1) & (moved[..., 0] <= crop[1] - 2)
    inside &= (moved[..., 1] >= 1) & (moved[..., 1] <= crop[0] - 2)
    assert inside.sum() > 20
    err = np.abs(decode_positions(out, moved) - trajs)[inside]
    assert err.max() < 0.2  # source pixels; quantisation alone gives about 0.12


def test_spatial_augs_centre_on_visible_points_and_flip_both_ways():
    flips, centred = set(), 0
    for seed in range(12):
        rng = np.random.default_rng(seed)
        trajs = np.tile(np.array([[[40.0, 30.0], [5.0, 5.0]]], dtype=np.float32), (4, 1, 1))  # S,N,2
        visibs = np.tile(np.array([[1.0, 0.0]]), (4, 1))  # the second point must not pull the crop
        _, moved = spatial_augs(ramp_clip(4), trajs, visibs, (32, 48), rng)
        x, y = moved[0, 0]
        assert 0 <= x <= 47 and 0 <= y <= 31
        flip_x, flip_y = bool(x < 23.5), bool(y < 15.5)
        flips.add((flip_x, flip_y))
        # unless the crop hits the frame border, x0 = int(x - 24) puts the point at 24 + frac(x)
        x, y = (47 - x if flip_x else x), (31 - y if flip_y else y)
        centred += int(24 <= x < 25 and 16 <= y < 17)
    assert len(flips) == 4
    assert centred >= 8


def test_eraser_marks_covered_points_not_visible():
    rng = np.random.default_rng(3)
    S, H, W, N = 5, 120, 160, 400
    rgbs = rng.integers(0, 256, size=(S, H, W, 3), dtype=np.uint8)
    trajs = rng.uniform([-10, -10], [W + 10, H + 10], size=(S, N, 2)).astype(np.float32)
    visibs = (rng.random((S, N)) < 0.8).astype(np.float32)
    out, vis = erase_occluders(rgbs, trajs, visibs, rng, p_clip=1.0, p_frame=1.0)
    np.testing.assert_array_equal(out[0], rgbs[0])
    np.testing.assert_array_equal(vis[0], visibs[0])
    erased = (out != rgbs).any(axis=-1)  # S,H,W
    assert erased[1:].mean() > 0.05
    px, py = np.floor(trajs + 0.5).astype(int).transpose(2, 0, 1)
    in_frame = (px >= 0) & (px < W) & (py >= 0) & (py < H)
    covered = np.zeros((S, N), dtype=bool)
    t, n = np.nonzero(in_frame)
    covered[t, n] = erased[t, py[t, n], px[t, n]]
    np.testing.assert_array_equal(vis, visibs * ~covered)
    assert (visibs * covered).sum() > 10
    untouched, vis_untouched = erase_occluders(rgbs, trajs, visibs, rng, p_clip=0.0)
    np.testing.assert_array_equal(untouched, rgbs)
    np.testing.assert_array_equal(vis_untouched, visibs)


def test_reverse_time_flips_everything_including_valids():
    rng = np.random.default_rng(4)
    S, N = 4, 3
    rgbs = rng.integers(0, 256, size=(S, 5, 6, 3), dtype=np.uint8)
    trajs = rng.random((S, N, 2)).astype(np.float32)
    visibs, valids = rng.random((S, N)) < 0.5, rng.random((S, N)) < 0.5
    out = reverse_time(rgbs, trajs, visibs, valids)
    for got, ref in zip(out, (rgbs, trajs, visibs, valids)):
        np.testing.assert_array_equal(got, ref[::-1])
    np.testing.assert_array_equal(out.valids[0], valids[-1])


def test_photometric_parameters_are_shared_by_all_frames():
    rng = np.random.default_rng(5)
    clip = rng.integers(0, 256, size=(3, 24, 32, 3), dtype=np.uint8)
    changed = 0
    for seed in range(20):
        out = photometric_clip(clip, np.random.default_rng(seed))
        assert out.shape == clip.shape and out.dtype == np.uint8
        changed += int((out != clip).any())
        for t in range(3):  # each frame alone, with the same seed, gets the same result
            alone = photometric_clip(clip[t : t + 1], np.random.default_rng(seed))
            np.testing.assert_array_equal(out[t], alone[0])
        same = photometric_clip(np.repeat(clip[:1], 3, axis=0), np.random.default_rng(seed))
        assert (same == same[:1]).all()
    assert 10 <= changed < 20  # the whole pipeline runs with p=0.8


@pytest.mark.parametrize("size", [(40, 60), (90, 120)])
def test_augment_clip_shapes_determinism_and_purity(size):
    S, N, crop = 5, 20, (48, 64)
    rng = np.random.default_rng(6)
    rgbs = rng.integers(0, 256, size=(S, *size, 3), dtype=np.uint8)
    trajs = rng.uniform(0, size[1] - 1, size=(S, N, 2)).astype(np.float32)
    visibs = np.ones((S, N), dtype=np.float32)
    valids = np.ones((S, N), dtype=np.float32)
    valids[-1, 0] = 0
    copies = [a.copy() for a in (rgbs, trajs, visibs, valids)]
    reversed_seen = False
    for seed in range(6):
        a = augment_clip(rgbs, trajs, visibs, valids, crop, np.random.default_rng(seed))
        b = augment_clip(rgbs, trajs, visibs, valids, crop, np.random.default_rng(seed))
        assert a.rgbs.shape == (S, *crop, 3) and a.trajs.shape == (S, N, 2)
        assert a.rgbs.dtype == np.uint8 and a.trajs.dtype == np.float32
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
        reversed_seen |= bool(a.valids[0, 0] == 0)
    assert reversed_seen
    for x, y in zip(copies, (rgbs, trajs, visibs, valids)):
        np.testing.assert_array_equal(x, y)


def test_augment_clip_rejects_bad_shapes():
    rgbs = np.zeros((3, 10, 10, 3), dtype=np.uint8)
    ok = np.zeros((3, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="trajs must be S,N,2 with S=3"):
        augment_clip(rgbs, np.zeros((2, 4, 2), np.float32), ok, ok, (8, 8), np.random.default_rng(0))
    with pytest.raises(ValueError, match="valids must be"):
        augment_clip(rgbs, np.zeros((3, 4, 2), np.float32), ok, ok[:, :2], (8, 8), np.random.default_rng(0))
    with pytest.raises(ValueError, match="rgbs must be S,H,W,3 uint8"):
        augment_clip(
            rgbs.astype(np.float32), np.zeros((3, 4, 2), np.float32), ok, ok, (8, 8), np.random.default_rng(0)
        )


def test_photometric_transforms_draw_independently():
    # each clip is changed with probability 0.8 * (1 - P(no transform fires)) ~= 0.78; transforms sharing
    # one seed (all apply-or-not draws equal) would give ~0.5
    clip = np.random.default_rng(0).integers(0, 256, size=(2, 16, 16, 3), dtype=np.uint8)
    rng = np.random.default_rng(1)
    rate = np.mean([(photometric_clip(clip, rng) != clip).any() for _ in range(200)])
    assert 0.68 < rate < 0.88
