import numpy as np
import pytest

from datasets import augment
from datasets.augment import (
    _drifting_crops,
    _drifting_sizes,
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


class ScriptedRng:
    """Stands in for np.random.Generator: hands out scripted draws, each given as (method, low, high, value),
    and checks that every call asks for the scripted range (the official constants)."""

    def __init__(self, *draws: tuple) -> None:
        self.draws = list(draws)

    def _next(self, method: str, low: float | None, high: float | None, size: int | None) -> object:
        assert self.draws, f"unexpected draw {method}({low}, {high})"
        name, lo, hi, value = self.draws.pop(0)
        assert (name, lo, hi) == (method, low, high), (
            f"{method}({low}, {high}) drawn where {name}({lo}, {hi}) was"
        )
        assert np.shape(value) == (() if size is None else (size,))
        return np.asarray(value) if size is not None else value

    def uniform(self, low: float, high: float, size: int | None = None) -> object:
        return self._next("uniform", low, high, size)

    def integers(self, low: int, high: int, size: int | None = None) -> object:
        return self._next("integers", low, high, size)

    def random(self) -> float:
        return self._next("random", None, None, None)

    def done(self) -> bool:
        return not self.draws


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
    with pytest.raises(ValueError, match=r"^valids must be \(3, 4\), got \(3, 2\)$"):
        augment_clip(rgbs, np.zeros((3, 4, 2), np.float32), ok, ok[:, :2], (8, 8), np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"^visibs must be \(3, 4\), got \(3, 2\)$"):
        augment_clip(rgbs, np.zeros((3, 4, 2), np.float32), ok[:, :2], ok, (8, 8), np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"rgbs must be S,H,W,3 uint8, got \(10, 10, 3\) uint8"):
        augment_clip(rgbs[0], np.zeros((3, 4, 2), np.float32), ok, ok, (8, 8), np.random.default_rng(0))
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


def test_drifting_zoom_by_hand():
    # t=0: the initial zoom 1.0; t=1: velocity (2^-7, -2^-7), axes pulled halfway to their mean: 1.00390625
    # and 0.99609375 -> 3011 x 1992 (ints of 3000 sx, 2000 sy), and the realised zoom 3011/3000, 1992/2000
    # carries on; t=2: velocity 0.9 v + (2^-8, 2^-7) = (0.0109375, 0.00078125) -> zoom 1.0101484, 1.0012370
    rng = ScriptedRng(
        ("uniform", 0.25, 1.5, 1.0),
        ("uniform", -0.01, 0.01, [2**-7, -(2**-7)]),
        ("uniform", -0.01, 0.01, 2**-8),
        ("uniform", -0.01, 0.01, 2**-7),
    )
    sizes = _drifting_sizes(3, 2000, 3000, (32, 48), rng)
    np.testing.assert_array_equal(sizes, [[2000, 3000], [1992, 3011], [2002, 3030]])
    assert rng.done()
    # every frame is at least crop + 16 on each side: 0.25 * (40, 50) -> (48, 64), whose zoom (1.2, 1.28)
    # carries on
    rng = ScriptedRng(("uniform", 0.25, 1.5, 0.25), ("uniform", -0.01, 0.01, [2**-7, 2**-7]))
    np.testing.assert_array_equal(_drifting_sizes(2, 40, 50, (32, 48), rng), [[48, 64], [49, 64]])
    # the zoom stays within [0.2, 2]
    rng = ScriptedRng(("uniform", 0.25, 1.5, 1.9921875), ("uniform", -0.01, 0.01, [2**-6, 2**-6]))
    np.testing.assert_array_equal(_drifting_sizes(2, 1000, 1000, (32, 48), rng), [[1992, 1992], [2000, 2000]])
    rng = ScriptedRng(("uniform", 0.25, 1.5, 0.203125), ("uniform", -0.01, 0.01, [-(2**-7), -(2**-7)]))
    np.testing.assert_array_equal(_drifting_sizes(2, 1000, 1000, (32, 48), rng), [[203, 203], [200, 200]])


def test_drifting_crop_by_hand():
    # the first corner centres the crop on the start point: int(100.7 - 24), int(50.2 - 16); then offsets
    # (5, -3), then int(0.8 o + 0.2 d) for draws d: (6, -6) and (8, -8)
    rng = ScriptedRng(
        ("integers", -20, 20, [5, -3]),
        ("integers", -20, 21, 10),
        ("integers", -20, 21, -20),
        ("integers", -20, 21, 20),
        ("integers", -20, 21, -20),
    )
    corners = _drifting_crops(np.array([[200, 300]] * 4), (100.7, 50.2), (32, 48), rng)
    np.testing.assert_array_equal(corners, [[76, 34], [81, 31], [87, 25], [95, 17]])
    assert rng.done()
    # the corner stays in [0, size - crop - 1], and drifts on from where it was held
    rng = ScriptedRng(("integers", -20, 20, [-19, -19]))
    corners = _drifting_crops(np.array([[60, 80]] * 2), (70.0, 50.0), (32, 48), rng)
    np.testing.assert_array_equal(corners, [[31, 27], [12, 8]])
    np.testing.assert_array_equal(_drifting_crops(np.array([[60, 80]]), (5.0, 5.0), (32, 48), rng), [[0, 0]])
    # an odd crop centres on the start less its integer half: int(100.2 - 23), int(50.2 - 15)
    np.testing.assert_array_equal(
        _drifting_crops(np.array([[200, 300]]), (100.2, 50.2), (31, 47), rng), [[77, 35]]
    )


def test_spatial_augs_compose_resize_pad_zoom_crop_and_flips():
    """With scripted draws, each track goes through the four steps one by one: resize to crop + 64, pad, zoom
    to the frame's size, crop at the frame's corner; then the flips."""
    S, H, W, crop = 2, 48, 64, (32, 48)
    trajs = np.array([[[10.0, 20.0], [30.5, 7.25]], [[12.0, 21.0], [29.0, 9.0]]], np.float32)
    visibs = np.ones((S, 2), np.float32)
    bh, bw = 32 + 64, 48 + 64  # 96 x 112
    pads = [3, 5, 7, 9]  # y0, y1, x0, x1
    ph, pw = bh + 3 + 5, bw + 7 + 9  # 104 x 128
    for flips, sign in [((0.7, 0.2), (1, -1)), ((0.2, 0.9), (-1, 1))]:
        rng = ScriptedRng(
            ("integers", 0, 64, pads),
            ("uniform", 0.25, 1.5, 1.0),
            ("uniform", -0.01, 0.01, [0.0, 0.0]),
            ("integers", -20, 20, [4, -2]),
            ("random", None, None, flips[0]),
            ("random", None, None, flips[1]),
        )
        out, moved = spatial_augs(ramp_clip(S, H, W), trajs, visibs, crop, rng)
        assert rng.done() and out.shape == (S, *crop, 3)
        sizes = [(ph, pw)] * 2  # zoom 1 throughout
        x = (trajs[..., 0] + 0.5) * bw / W - 0.5 + 7  # resized, padded
        y = (trajs[..., 1] + 0.5) * bh / H - 0.5 + 3
        x = (x + 0.5) * pw / sizes[0][1] - 0.5  # zoomed (here by 1)
        y = (y + 0.5) * ph / sizes[0][0] - 0.5
        start = np.array([x[0].mean(), y[0].mean()])  # the mean frame-0 position of the visible points
        x0 = np.array([int(start[0] - 24), int(start[0] - 24) + 4])
        y0 = np.array([int(start[1] - 16), int(start[1] - 16) - 2])
        x, y = x - x0[:, None], y - y0[:, None]
        if sign[0] < 0:
            x = crop[1] - 1 - x
        if sign[1] < 0:
            y = crop[0] - 1 - y
        np.testing.assert_allclose(moved, np.stack([x, y], -1), atol=1e-4)


def test_spatial_augs_crop_held_at_the_corner():
    """Frame 0's only visible point sits at the top-left, so the crop is held at the padded frame's corner:
    the tracks are then the resized and padded positions themselves, with no crop offset to hide a wrong
    offset, and the padding is black."""
    S, H, W, crop = 2, 48, 64, (32, 48)
    trajs = np.array([[[0.0, 0.0], [60.0, 40.0]], [[60.0, 40.0], [1.0, 2.0]]], np.float32)
    visibs = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)  # frame 1's visible point must not place the crop
    rng = ScriptedRng(
        ("integers", 0, 64, [3, 5, 7, 9]),  # pads y0, y1, x0, x1
        ("uniform", 0.25, 1.5, 1.0),
        ("uniform", -0.01, 0.01, [0.0, 0.0]),
        ("integers", -20, 20, [0, 0]),
        ("random", None, None, 0.9),  # no flips
        ("random", None, None, 0.9),
    )
    out, moved = spatial_augs(ramp_clip(S, H, W), trajs, visibs, crop, rng)
    assert rng.done()
    # resized to 112 x 96 by the pixel-centre rule, then 7 px of padding on the left and 3 on top
    x = (trajs[..., 0] + 0.5) * 112 / 64 - 0.5 + 7
    y = (trajs[..., 1] + 0.5) * 96 / 48 - 0.5 + 3
    np.testing.assert_allclose(moved, np.stack([x, y], -1), atol=1e-4)
    # output x maps to source (x - 7.375) / 1.75 and y to (y - 3.5) / 2: columns 0..5 and rows 0..1 read
    # only the black border; the blue channel is 128 wherever the frame is
    assert not out[:, :, :6].any() and not out[:, :2].any()
    assert (out[:, 4:, 8:, 2] == 128).all()


def test_eraser_boxes_by_hand():
    S, H, W = 3, 60, 80
    rgbs = np.random.default_rng(0).integers(0, 256, (S, H, W, 3), dtype=np.uint8)
    trajs = np.zeros((S, 8, 2), np.float32)
    # pixel of a point: round(x), round(y) with halves up; box 1 covers x 40..59, y 35..44
    trajs[2] = [[39.4, 40], [39.6, 40], [59.4, 44.4], [59.5, 40], [50, 34.5], [79.4, 2], [0.0, 45], [15, 45]]
    visibs = np.ones((S, 8), np.float32)
    rng = ScriptedRng(
        ("random", None, None, 0.19),  # < 0.2: this clip gets occluders
        ("random", None, None, 0.2),  # frame 1: not below 0.2, no box
        ("random", None, None, 0.0),  # frame 2: boxes
        ("integers", 1, 11, 3),
        ("integers", 0, W, 50),
        ("integers", 0, H, 40),
        ("integers", 20, 300, [20, 10]),  # box 1: x 40..59, y 35..44
        ("integers", 0, W, 75),
        ("integers", 0, H, 0),
        ("integers", 20, 300, [21, 9]),  # box 2: x round(64.5) = 64 .. 79 (the last column), y 0..3
        ("integers", 0, W, 5),
        ("integers", 0, H, 50),
        ("integers", 20, 300, [20, 20]),  # box 3: x -5 -> 0 (the first column) .. 14, y 40..59
    )
    out, vis = erase_occluders(rgbs, trajs, visibs, rng)
    assert rng.done()
    np.testing.assert_array_equal(out[:2], rgbs[:2])
    expected = rgbs[2].copy()
    for y0, y1, x0, x1 in [(35, 45, 40, 60), (0, 4, 64, 80), (40, 60, 0, 15)]:
        expected[y0:y1, x0:x1] = np.round(expected[y0:y1, x0:x1].reshape(-1, 3).mean(0))
    np.testing.assert_array_equal(out[2], expected)
    np.testing.assert_array_equal(vis[:2], 1)
    np.testing.assert_array_equal(vis[2], [1, 0, 0, 1, 0, 0, 0, 1])
    assert visibs.min() == 1 and rgbs is not out  # inputs untouched
    rng = ScriptedRng(("random", None, None, 0.2))  # not below p_clip: nothing happens
    out, vis = erase_occluders(rgbs, trajs, visibs, rng)
    np.testing.assert_array_equal(out, rgbs)
    np.testing.assert_array_equal(vis, visibs)


def test_just_crop_resizes_small_frames_up_first():
    rgbs = ramp_clip(1, H=10, W=20)
    trajs = np.array([[[0.0, 0.0], [19.0, 9.0]]], np.float32)
    rng = ScriptedRng(("integers", 0, 1, 0), ("integers", 0, 9, 4))  # y0 in [0, 16 - 16], x0 in [0, 20 - 12]
    out, moved = just_crop(rgbs, trajs, (16, 12), rng)
    assert out.shape == (1, 16, 12, 3) and rng.done()
    # height 10 -> 16: y -> (y + 0.5) * 1.6 - 0.5; the width is kept; then x - 4
    np.testing.assert_allclose(moved[0], [[-4, 0.3], [15, 14.7]], atol=1e-5)
    np.testing.assert_array_equal(out[0, :, 0, 0], 4 * 4)  # the crop's first column is source column 4


@pytest.mark.parametrize(
    "draws, branch, reversed_",
    [([0.49, 0.69], "spatial", True), ([0.5, 0.7, 0.49], "crop", False), ([0.5, 0.7, 0.5], "resize", False)],
)
def test_augment_clip_chain(monkeypatch, draws, branch, reversed_):
    """photometric -> occluders -> time reversal (p=0.5) -> spatial (p=0.7), else crop or resize (p=0.5)."""
    calls = []

    def record(name, result):
        def fn(*args):
            calls.append(name)
            return result(*args)

        return fn

    monkeypatch.setattr(augment, "photometric_clip", record("photometric", lambda rgbs, rng: rgbs + 1))
    monkeypatch.setattr(
        augment, "erase_occluders", record("occluders", lambda r, t, v, rng: (r * 2, v * 0.5))
    )
    monkeypatch.setattr(
        augment, "spatial_augs", record("spatial", lambda r, t, v, c, rng: (r[:, :2, :3], t + 1))
    )
    monkeypatch.setattr(augment, "just_crop", record("crop", lambda r, t, c, rng: (r[:, :2, :3], t + 2)))
    monkeypatch.setattr(augment, "just_resize", record("resize", lambda r, t, c: (r[:, :2, :3], t + 3)))
    S, N = 3, 2
    rgbs = (
        np.arange(S, dtype=np.uint8)[:, None, None, None].repeat(4, 1).repeat(5, 2).repeat(3, 3)
    )  # frame t: t
    trajs = np.arange(S * N * 2, dtype=np.float32).reshape(S, N, 2)
    visibs, valids = np.ones((S, N), np.float32), np.arange(S * N, dtype=np.float32).reshape(S, N)
    rng = ScriptedRng(*[("random", None, None, d) for d in draws])
    out = augment_clip(rgbs, trajs, visibs, valids, (2, 3), rng)
    assert calls == ["photometric", "occluders", branch] and rng.done()
    order = slice(None, None, -1 if reversed_ else 1)
    np.testing.assert_array_equal(out.rgbs[:, 0, 0, 0], (2 * (np.arange(S) + 1))[order])
    shift = {"spatial": 1, "crop": 2, "resize": 3}[branch]
    np.testing.assert_array_equal(out.trajs, trajs[order] + shift)
    np.testing.assert_array_equal(out.visibs, visibs * 0.5)
    np.testing.assert_array_equal(out.valids, valids[order])
