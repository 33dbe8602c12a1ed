"""Drawing tracks on frames (cv2, anti-aliased). Every function returns new uint8 RGB arrays and
leaves its inputs untouched; no function writes files. Coordinates are x,y pixels, integers at pixel
centres, drawn with 1/16-pixel precision."""

from collections.abc import Sequence

import cv2
import numpy as np

_SHIFT = 4  # cv2 fixed-point bits
_ONE = 1 << _SHIFT
_MAX_COORD = 1e6  # far-off points are clipped here so cv2's fixed-point coordinates cannot overflow
# Moreland's diverging blue-grey-red map (as matplotlib's 'coolwarm'), sampled at 0, 1/4, 1/2, 3/4, 1
_COOLWARM = np.array(
    [
        [0.230, 0.299, 0.754],
        [0.554, 0.690, 0.996],
        [0.865, 0.865, 0.865],
        [0.958, 0.604, 0.482],
        [0.706, 0.016, 0.150],
    ]
)


def colormap(name: str, values: np.ndarray) -> np.ndarray:
    """Colours N,3 uint8 RGB for values in [0, 1] (clipped): 'coolwarm', or any OpenCV colormap by
    name ('winter', 'spring', 'hot', 'jet', 'viridis', 'turbo', ...)."""
    values = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)  # N
    if name == "coolwarm":
        anchors = np.linspace(0.0, 1.0, len(_COOLWARM))
        rgb = np.stack([np.interp(values, anchors, _COOLWARM[:, c]) for c in range(3)], axis=-1)  # N,3
        return np.round(rgb * 255).astype(np.uint8)
    code = getattr(cv2, f"COLORMAP_{name.upper()}", None)
    if code is None:
        raise ValueError(f"unknown colormap {name!r}")
    lut = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], code)[:, 0, ::-1]  # 256,3 RGB
    return lut[np.round(values * 255).astype(np.int64)]


def colors_by_position(xy: np.ndarray, H: int, W: int) -> np.ndarray:
    """A smooth 2-D colour map of positions xy N,2 in an H x W image -> N,3 uint8 RGB: the hue turns
    with the angle around the image centre, the saturation grows from white at the centre to full at
    the middle of the borders (and beyond)."""
    xy = np.nan_to_num(np.asarray(xy, dtype=np.float64))  # N,2
    u = (xy[:, 0] - (W - 1) / 2) / max(W / 2, 1)  # N, -1..1 across the image
    v = (xy[:, 1] - (H - 1) / 2) / max(H / 2, 1)  # N
    hue = np.degrees(np.arctan2(v, u)) % 360.0
    saturation = np.clip(np.hypot(u, v), 0.0, 1.0)
    hsv = np.stack([hue, saturation, np.ones_like(hue)], axis=-1).astype(np.float32)  # N,3
    rgb = cv2.cvtColor(hsv[:, None], cv2.COLOR_HSV2RGB)[:, 0]  # N,3 in 0..1
    return np.round(rgb * 255).astype(np.uint8)


def _fixed(xy: np.ndarray) -> np.ndarray:
    """x,y pixels -> cv2 fixed-point integers (same shape)."""
    return np.round(np.clip(xy, -_MAX_COORD, _MAX_COORD) * _ONE).astype(np.int32)


def _draw_segments(
    frame: np.ndarray,
    starts: list[list[int]],
    ends: list[list[int]],
    drawn: np.ndarray,
    colors: list[tuple[int, ...]],
    thickness: int,
    opacity: float,
) -> np.ndarray:
    """Lines starts[n] -> ends[n] (fixed-point) for the points n in `drawn`, blended at `opacity`."""
    if not drawn.any():
        return frame
    layer = frame.copy()
    for n in np.flatnonzero(drawn).tolist():
        cv2.line(layer, starts[n], ends[n], colors[n], thickness, cv2.LINE_AA, _SHIFT)
    return cv2.addWeighted(layer, opacity, frame, 1.0 - opacity, 0.0)


def draw_tracks(
    frames: np.ndarray,
    trajs: np.ndarray,
    visibs: np.ndarray | None = None,
    colors: np.ndarray | None = None,
    trail: int = 8,
    radius: int = 2,
) -> np.ndarray:
    """Each track as a dot with a trail of its last `trail` steps fading into the past (the segment
    ending k steps ago has opacity 1 - k/(trail+1)).

    Args:
        frames: T,H,W,3 uint8 RGB. trajs: T,N,2 x,y pixels (non-finite positions are not drawn).
        visibs: T,N, occluded (0) points are drawn as hollow circles; None = all visible.
        colors: N,3 uint8 RGB; None = colors_by_position of the first frame's positions.
    Returns:
        T,H,W,3 uint8.
    """
    T, H, W, _ = frames.shape
    if trajs.ndim != 3 or trajs.shape[0] != T or trajs.shape[2] != 2:
        raise ValueError(f"trajs must be T,N,2 with T={T}, got {trajs.shape}")
    N = trajs.shape[1]
    if visibs is not None and visibs.shape != (T, N):
        raise ValueError(f"visibs must be {(T, N)}, got {visibs.shape}")
    colors = colors_by_position(trajs[0], H, W) if colors is None else np.asarray(colors, dtype=np.uint8)
    if colors.shape != (N, 3):
        raise ValueError(f"colors must be {(N, 3)}, got {colors.shape}")
    finite = np.isfinite(trajs).all(axis=-1)  # T,N
    points = _fixed(np.nan_to_num(trajs)).tolist()  # T,N,2 fixed-point
    color_list = [tuple(c) for c in colors.tolist()]
    hollow = np.zeros((T, N), dtype=bool) if visibs is None else ~(np.asarray(visibs) > 0)  # T,N
    thickness = max(1, radius // 2)
    out = np.empty_like(frames)  # T,H,W,3
    for t in range(T):
        frame = frames[t].copy()
        for age in range(min(t, trail) - 1, -1, -1):  # the segment ending `age` steps ago, oldest first
            a, b = t - age - 1, t - age
            opacity = 1.0 - age / (trail + 1)
            frame = _draw_segments(
                frame, points[a], points[b], finite[a] & finite[b], color_list, thickness, opacity
            )
        for n in np.flatnonzero(finite[t]).tolist():
            fill = 1 if hollow[t, n] else -1
            cv2.circle(frame, points[t][n], radius * _ONE, color_list[n], fill, cv2.LINE_AA, _SHIFT)
        out[t] = frame
    return out


def draw_trajs_on_image(
    rgb: np.ndarray,
    trajs: np.ndarray,
    valids: np.ndarray | None = None,
    cmap: str = "coolwarm",
    thickness: int = 1,
) -> np.ndarray:
    """Whole trajectories S,N,2 as polylines on one H,W,3 uint8 image, coloured by time: the segment
    from frame s to s+1 gets cmap(s / (S-2)). Segments with an invalid end (valids S,N) are skipped."""
    S, N, _ = trajs.shape
    if valids is not None and valids.shape != (S, N):
        raise ValueError(f"valids must be {(S, N)}, got {valids.shape}")
    ok = np.isfinite(trajs).all(axis=-1)  # S,N
    if valids is not None:
        ok &= np.asarray(valids) > 0
    out = rgb.copy()
    colors = colormap(cmap, np.arange(max(S - 1, 0)) / max(1, S - 2))  # S-1,3
    points = _fixed(np.nan_to_num(trajs))  # S,N,2
    for s in range(S - 1):
        drawn = np.flatnonzero(ok[s] & ok[s + 1])
        segments = [points[[s, s + 1], n] for n in drawn]
        if segments:
            cv2.polylines(out, segments, False, tuple(colors[s].tolist()), thickness, cv2.LINE_AA, _SHIFT)
    return out


def tile_frames(clips: Sequence[np.ndarray], cols: int | None = None) -> np.ndarray:
    """Lay clips of equal shape (T,H,W,3 or H,W,3) in a grid, row by row (one row by default);
    empty cells are black. Returns T,rows*H,cols*W,3 (or rows*H,cols*W,3)."""
    if not clips:
        raise ValueError("tile_frames needs at least one clip")
    shape = clips[0].shape
    if any(clip.shape != shape for clip in clips):
        raise ValueError(f"clips must share one shape, got {[clip.shape for clip in clips]}")
    cols = len(clips) if cols is None else cols
    if cols < 1:
        raise ValueError(f"cols must be >= 1, got {cols}")
    rows = -(-len(clips) // cols)
    *lead, H, W, C = shape
    out = np.zeros((*lead, rows * H, cols * W, C), dtype=clips[0].dtype)  # [T,]rows*H,cols*W,3
    for i, clip in enumerate(clips):
        r, c = divmod(i, cols)
        out[..., r * H : (r + 1) * H, c * W : (c + 1) * W, :] = clip
    return out


def draw_text(frame: np.ndarray, text: str) -> np.ndarray:
    """White text on a black box at the top left of an H,W,3 uint8 frame (e.g. a frame id or score)."""
    out = frame.copy()
    (width, height), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
    cv2.rectangle(out, (0, 0), (width + 10, height + baseline + 10), (0, 0, 0), -1)
    cv2.putText(out, text, (5, height + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return out
