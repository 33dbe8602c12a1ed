import numpy as np
import pytest

from utils.vis import colormap, colors_by_position, draw_text, draw_tracks, draw_trajs_on_image, tile_frames

RED = np.array([[255, 0, 0]], dtype=np.uint8)


def _black(T: int = 3, H: int = 40, W: int = 50) -> np.ndarray:
    return np.zeros((T, H, W, 3), dtype=np.uint8)


def _moving_right() -> np.ndarray:
    return np.array([[[10.0, 20.0]], [[20.0, 20.0]], [[30.0, 20.0]]], dtype=np.float32)  # T,N,2


def test_dot_lands_on_its_pixel_with_its_colour():
    color = np.array([[200, 50, 25]], dtype=np.uint8)
    trajs = np.array([[[10.0, 20.0]]], dtype=np.float32)  # x=10, y=20
    out = draw_tracks(_black(T=1), trajs, colors=color, radius=2)
    assert out.shape == (1, 40, 50, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, 20, 10], [200, 50, 25])
    np.testing.assert_array_equal(out[0, 20, 12], [200, 50, 25])  # within the radius
    assert out[0, 20, 14].max() == 0  # beyond it
    assert out[0, 10, 20].max() == 0  # x and y are not swapped
    weights = out[0, ..., 0].astype(float)
    ys, xs = np.mgrid[:40, :50]
    centroid = [(xs * weights).sum() / weights.sum(), (ys * weights).sum() / weights.sum()]
    np.testing.assert_allclose(centroid, [10.0, 20.0], atol=0.1)


def test_dots_keep_sub_pixel_positions():
    trajs = np.array([[[30.5, 10.25]]], dtype=np.float32)
    weights = draw_tracks(_black(T=1), trajs, colors=RED, radius=3)[0, ..., 0].astype(float)
    ys, xs = np.mgrid[:40, :50]
    centroid = [(xs * weights).sum() / weights.sum(), (ys * weights).sum() / weights.sum()]
    np.testing.assert_allclose(centroid, [30.5, 10.25], atol=0.1)


def test_trail_fades_with_age():
    out = draw_tracks(_black(), _moving_right(), colors=RED, trail=8)
    newest, older = int(out[2, 20, 25, 0]), int(out[2, 20, 15, 0])
    assert newest > 150  # segment 20 -> 30, opacity 1
    assert older == pytest.approx(newest * 8 / 9, abs=1)  # segment 10 -> 20, opacity 1 - 1/9
    assert out[2, 20, 15, 1:].max() == 0  # red only
    assert out[0, 20, 15].max() == 0  # no trail at the first frame
    short = draw_tracks(_black(), _moving_right(), colors=RED, trail=1)
    assert short[2, 20, 15].max() == 0  # only the last step is kept
    assert int(short[2, 20, 25, 0]) == newest


def test_occluded_points_are_hollow():
    visibs = np.array([[1.0], [1.0], [0.0]])
    out = draw_tracks(_black(), _moving_right(), visibs=visibs, colors=RED, trail=0, radius=3)
    assert out[1, 20, 20, 0] == 255  # visible: filled
    assert out[2, 20, 30, 0] == 0  # occluded: empty centre
    assert out[2, 20, 33, 0] > 200  # ... inside a ring


def test_non_finite_positions_are_skipped_and_inputs_untouched():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 40, 50, 3), dtype=np.uint8)
    trajs = _moving_right()
    trajs[1, 0] = np.nan
    frames_before, trajs_before = frames.copy(), trajs.copy()
    out = draw_tracks(frames, trajs, colors=RED)
    np.testing.assert_array_equal(frames, frames_before)
    np.testing.assert_array_equal(trajs, trajs_before)
    np.testing.assert_array_equal(out[1], frames[1])  # no dot, and no segment touching the NaN
    np.testing.assert_array_equal(out[2, 20, 15], frames[2, 20, 15])
    assert not np.array_equal(out[2], frames[2])


def test_draw_tracks_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="trajs must be T,N,2 with T=3"):
        draw_tracks(_black(), _moving_right()[:2])
    with pytest.raises(ValueError, match="colors must be"):
        draw_tracks(_black(), _moving_right(), colors=np.zeros((2, 3), np.uint8))


def test_colors_by_position_is_a_smooth_2d_map():
    H, W = 40, 50
    centre, right, left = [24.5, 19.5], [49.0, 19.5], [0.0, 19.5]
    colors = colors_by_position(np.array([centre, right, left, [30.0, 30.0], [30.5, 30.0]]), H, W)
    assert colors.shape == (5, 3) and colors.dtype == np.uint8
    np.testing.assert_array_equal(colors[0], [255, 255, 255])  # centre: white
    assert colors[1, 0] == 255 and colors[1, 1:].max() < 10  # right edge: red
    assert colors[2, 0] < 10 and colors[2, 1:].min() == 255  # left edge: cyan
    assert np.abs(colors[3].astype(int) - colors[4]).max() <= 8  # neighbours look alike
    assert len({tuple(c) for c in colors[:4]}) == 4


def test_draw_trajs_on_image_colours_by_time_and_skips_invalid():
    image = np.zeros((20, 30, 3), dtype=np.uint8)
    trajs = np.array([[[5.0, 10.0]], [[15.0, 10.0]], [[25.0, 10.0]]], dtype=np.float32)  # S,N,2
    out = draw_trajs_on_image(image, trajs, cmap="coolwarm")
    assert out.shape == image.shape and image.max() == 0
    first, last = out[10, 10].astype(int), out[10, 20].astype(int)
    assert first[2] > first[0]  # early segment: blue end of coolwarm
    assert last[0] > last[2]  # late segment: red end
    out = draw_trajs_on_image(image, trajs, valids=np.array([[1], [1], [0]]))
    assert out[10, 10].max() > 0
    assert out[10, 20].max() == 0


def test_colormap():
    np.testing.assert_array_equal(colormap("coolwarm", [0.0, 1.0]), [[59, 76, 192], [180, 4, 38]])
    np.testing.assert_array_equal(colormap("winter", [0.0, 2.0]), [[0, 0, 255], [0, 255, 128]])  # clipped
    with pytest.raises(ValueError, match="unknown colormap 'nope'"):
        colormap("nope", [0.5])


def test_tile_frames():
    a = np.full((2, 4, 5, 3), 1, dtype=np.uint8)
    b = np.full((2, 4, 5, 3), 2, dtype=np.uint8)
    row = tile_frames([a, b])
    assert row.shape == (2, 4, 10, 3)
    assert row[:, :, :5].min() == 1 and row[:, :, 5:].min() == 2
    grid = tile_frames([a, b, a], cols=2)
    assert grid.shape == (2, 8, 10, 3)
    assert grid[:, 4:, 5:].max() == 0  # empty cell
    assert tile_frames([a[0], b[0]], cols=1).shape == (8, 5, 3)
    with pytest.raises(ValueError, match="share one shape"):
        tile_frames([a, b[:1]])


def test_draw_text_stays_in_the_corner():
    frame = np.full((60, 120, 3), 100, dtype=np.uint8)
    out = draw_text(frame, "d_avg 70.6")
    assert frame.min() == 100 and out.shape == frame.shape
    assert out[:25, :80].max() == 255 and out[:25, :80].min() == 0
    np.testing.assert_array_equal(out[30:], frame[30:])
