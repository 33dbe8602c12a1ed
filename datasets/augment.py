"""Clip augmentations: pure numpy functions on (S,H,W,3) uint8 frames and their tracks.

Every function takes `rgbs` S,H,W,3 uint8, `trajs` S,N,2 float32 (x,y pixels), `visibs` S,N and
`valids` S,N, returns new arrays (inputs are never modified), and draws randomness only from the
`rng` it is given, so a clip is a pure function of its seed.

Coordinates: integer x,y is the centre of pixel column x, row y. Tracks are transformed exactly as
the pixels are under that convention: a resize from W to W' maps x to (x + 0.5)·W'/W − 0.5 (the
sampling grid of cv2.resize and cv2.warpAffine), and a horizontal flip maps x to W − 1 − x.
The official code used x·W'/W and W − x, which are off by up to half a pixel and one pixel.
"""

import functools
import os
from typing import NamedTuple

import cv2
import numpy as np

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations otherwise queries PyPI at import
import albumentations as A  # noqa: E402

# Spatial augmentation constants of the official PointOdyssey loader.
RESIZE_MARGIN = 64  # the clip is first resized to crop + this (official resize_size = crop + 64)
MAX_PAD = 64  # zero padding per side is drawn from [0, MAX_PAD)
MIN_MARGIN = 16  # every scaled frame is at least crop + this on each side
SCALE_RANGE = (0.25, 1.5)
SCALE_CLIP = (0.2, 2.0)
MAX_SCALE_STEP = 0.01  # scale velocity increments are U(-0.1, 0.1) * 0.1
MAX_CROP_OFFSET = 20  # crop velocity, pixels per frame


class ClipArrays(NamedTuple):
    rgbs: np.ndarray  # S,H,W,3 uint8
    trajs: np.ndarray  # S,N,2 float32
    visibs: np.ndarray  # S,N
    valids: np.ndarray  # S,N


def _resize_coords(trajs: np.ndarray, sx: float, sy: float) -> np.ndarray:
    scale = np.array([sx, sy], dtype=np.float64)
    return ((trajs + 0.5) * scale - 0.5).astype(np.float32)  # S,N,2


def resize_clip(rgbs: np.ndarray, trajs: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Resize every frame to size=(H',W') (bilinear) and map the tracks with them."""
    S, H, W, _ = rgbs.shape
    h, w = size
    out = np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_LINEAR) for f in rgbs])  # S,h,w,3
    return out, _resize_coords(trajs, w / W, h / H)


def just_resize(
    rgbs: np.ndarray, trajs: np.ndarray, crop_size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Resize the whole clip to crop_size=(H,W)."""
    return resize_clip(rgbs, trajs, crop_size)


def just_crop(
    rgbs: np.ndarray, trajs: np.ndarray, crop_size: tuple[int, int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Cut one random crop_size=(H,W) window, the same for all frames; frames smaller than the
    crop are first resized up to it."""
    S, H, W, _ = rgbs.shape
    ch, cw = crop_size
    if H < ch or W < cw:
        rgbs, trajs = resize_clip(rgbs, trajs, (max(H, ch), max(W, cw)))
        S, H, W, _ = rgbs.shape
    y0 = int(rng.integers(0, H - ch + 1))
    x0 = int(rng.integers(0, W - cw + 1))
    rgbs = np.ascontiguousarray(rgbs[:, y0 : y0 + ch, x0 : x0 + cw])  # S,ch,cw,3
    trajs = (trajs - np.array([x0, y0], dtype=np.float32)).astype(np.float32)  # S,N,2
    return rgbs, trajs


@functools.cache
def _photometric_pipeline() -> A.Compose:
    # The official pipeline (written for albumentations 1.3.1), in 2.x argument names.
    # Called as t(images=clip) it draws one parameter set (noise map included) for all frames.
    return A.Compose(
        [
            A.GaussNoise(std_range=(10**0.5 / 255, 50**0.5 / 255), p=0.2),  # variance 10..50 on 0..255
            A.OneOf(
                [
                    A.MotionBlur(blur_limit=(3, 7), p=0.2),
                    A.MedianBlur(blur_limit=3, p=0.1),
                    A.Blur(blur_limit=3, p=0.1),
                ],
                p=0.2,
            ),
            A.OneOf([A.CLAHE(clip_limit=2), A.Sharpen(), A.Emboss()], p=0.2),
            A.RGBShift(r_shift_limit=20, g_shift_limit=20, b_shift_limit=20, p=0.5),
            A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
            A.RandomGamma(gamma_limit=(80, 120), p=0.5),
            A.HueSaturationValue(hue_shift_limit=20, sat_shift_limit=30, val_shift_limit=20, p=0.3),
            A.ImageCompression(quality_range=(50, 100), p=0.3),
        ],
        p=0.8,
    )


def _reseed(transform: A.BasicTransform | A.BaseCompose, rng: np.random.Generator) -> None:
    """Give every transform its own seed. Compose.set_random_seed hands the same seed to all children,
    which makes their apply-or-not draws identical, so that e.g. RGBShift (p=.5) would fire whenever
    GaussNoise (p=.2) did."""
    transform.set_random_seed(int(rng.integers(0, 2**31)))
    for child in getattr(transform, "transforms", []):
        _reseed(child, rng)


def photometric_clip(rgbs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Noise, blur, sharpen/emboss/CLAHE, RGB shift, brightness/contrast, gamma, hue/saturation and
    JPEG, each with the official probability and with the same parameters on every frame.

    rgbs: S,H,W,3 uint8 RGB. Returns a new S,H,W,3 uint8 array.
    """
    pipeline = _photometric_pipeline()
    _reseed(pipeline, rng)
    return np.ascontiguousarray(pipeline(images=rgbs)["images"], dtype=np.uint8)  # S,H,W,3


def erase_occluders(
    rgbs: np.ndarray,
    trajs: np.ndarray,
    visibs: np.ndarray,
    rng: np.random.Generator,
    p_clip: float = 0.2,
    p_frame: float = 0.2,
) -> tuple[np.ndarray, np.ndarray]:
    """With probability p_clip, paint 1..10 boxes of 20..299 px filled with their mean colour on each
    frame t >= 1 (each with probability p_frame), and mark the points they cover not visible.
    Frame 0 (the query frame) and valids are untouched. Returns new (rgbs S,H,W,3 uint8, visibs S,N).
    """
    S, H, W, _ = rgbs.shape
    rgbs, visibs = rgbs.copy(), visibs.copy()
    if rng.random() >= p_clip:
        return rgbs, visibs
    # A point covers pixel floor(x + 0.5), floor(y + 0.5) (halves round up), as in synthetic.visible_in.
    pixels = np.floor(trajs + 0.5)  # S,N,2
    for t in range(1, S):
        if rng.random() >= p_frame:
            continue
        for _ in range(int(rng.integers(1, 11))):
            xc, yc = rng.integers(0, W), rng.integers(0, H)
            dx, dy = rng.integers(20, 300, size=2)
            x0, x1 = (int(np.clip(round(v), 0, W)) for v in (xc - dx / 2, xc + dx / 2))
            y0, y1 = (int(np.clip(round(v), 0, H)) for v in (yc - dy / 2, yc + dy / 2))
            if x1 <= x0 or y1 <= y0:
                continue
            box = rgbs[t, y0:y1, x0:x1]  # h,w,3 view
            box[:] = np.round(box.reshape(-1, 3).mean(axis=0)).astype(np.uint8)
            px, py = pixels[t, :, 0], pixels[t, :, 1]
            visibs[t, (px >= x0) & (px < x1) & (py >= y0) & (py < y1)] = 0
    return rgbs, visibs


def reverse_time(rgbs: np.ndarray, trajs: np.ndarray, visibs: np.ndarray, valids: np.ndarray) -> ClipArrays:
    """Play the clip backwards: every array, valids included, is flipped along time."""
    return ClipArrays(*(np.ascontiguousarray(a[::-1]) for a in (rgbs, trajs, visibs, valids)))


def _drifting_sizes(
    S: int, H: int, W: int, crop_size: tuple[int, int], rng: np.random.Generator
) -> np.ndarray:
    """Per-frame frame sizes (S,2 as H_t,W_t) of a random zoom that drifts smoothly over time."""
    ch, cw = crop_size
    sx = sy = rng.uniform(*SCALE_RANGE)
    dx = dy = 0.0
    sizes = np.zeros((S, 2), dtype=np.int64)  # S,2
    for t in range(S):
        if t == 1:
            dx, dy = rng.uniform(-MAX_SCALE_STEP, MAX_SCALE_STEP, size=2)
        elif t > 1:
            dx = 0.9 * dx + rng.uniform(-MAX_SCALE_STEP, MAX_SCALE_STEP)
            dy = 0.9 * dy + rng.uniform(-MAX_SCALE_STEP, MAX_SCALE_STEP)
        sx, sy = sx + dx, sy + dy
        mean = (sx + sy) / 2  # pull the two axes toward a common zoom
        sx, sy = np.clip([0.5 * sx + 0.5 * mean, 0.5 * sy + 0.5 * mean], *SCALE_CLIP)
        h, w = max(int(H * sy), ch + MIN_MARGIN), max(int(W * sx), cw + MIN_MARGIN)
        sizes[t] = h, w
        sx, sy = w / W, h / H  # carry the realised zoom to the next frame
    return sizes


def _drifting_crops(
    sizes: np.ndarray, start: tuple[float, float], crop_size: tuple[int, int], rng: np.random.Generator
) -> np.ndarray:
    """Per-frame integer crop corners (S,2 as x0,y0) that start centred on start=(x,y) and drift."""
    ch, cw = crop_size
    x0, y0 = int(start[0] - cw // 2), int(start[1] - ch // 2)
    ox = oy = 0
    corners = np.zeros((len(sizes), 2), dtype=np.int64)  # S,2
    for t, (h, w) in enumerate(sizes):
        if t == 1:
            ox, oy = (int(v) for v in rng.integers(-MAX_CROP_OFFSET, MAX_CROP_OFFSET, size=2))
        elif t > 1:
            ox = int(0.8 * ox + 0.2 * rng.integers(-MAX_CROP_OFFSET, MAX_CROP_OFFSET + 1))
            oy = int(0.8 * oy + 0.2 * rng.integers(-MAX_CROP_OFFSET, MAX_CROP_OFFSET + 1))
        x0 = min(max(x0 + ox, 0), w - cw - 1)
        y0 = min(max(y0 + oy, 0), h - ch - 1)
        corners[t] = x0, y0
    return corners


def spatial_augs(
    rgbs: np.ndarray,
    trajs: np.ndarray,
    visibs: np.ndarray,
    crop_size: tuple[int, int],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Resize to crop + 64, zero-pad each side by 0..63 px, zoom each frame with a smoothly drifting
    scale, cut a crop_size=(H,W) window that starts on the frame-0 visible points and drifts, then flip
    horizontally and vertically with probability 0.5 each. Returns (rgbs S,H,W,3 uint8, trajs S,N,2).
    """
    S, H, W, _ = rgbs.shape
    ch, cw = crop_size
    bh, bw = ch + RESIZE_MARGIN, cw + RESIZE_MARGIN  # base size before padding
    bx, by = bw / W, bh / H
    pad_y0, pad_y1, pad_x0, pad_x1 = (int(v) for v in rng.integers(0, MAX_PAD, size=4))
    sizes = _drifting_sizes(S, bh + pad_y0 + pad_y1, bw + pad_x0 + pad_x1, crop_size, rng)  # S,2
    zooms = sizes[:, ::-1] / np.array([bw + pad_x0 + pad_x1, bh + pad_y0 + pad_y1])  # S,2 (x,y)
    # x_t = scale·x + shift maps original pixels into the zoomed, padded frame t (resize, pad, resize).
    scale = zooms * np.array([bx, by])  # S,2
    shift = zooms * np.array([0.5 * bx + pad_x0, 0.5 * by + pad_y0]) - 0.5  # S,2
    zoomed0 = trajs[0] * scale[0] + shift[0]  # N,2
    seen = visibs[0] > 0
    start = zoomed0[seen].mean(axis=0) if seen.any() else np.array([cw, ch], dtype=np.float64)
    shift = shift - _drifting_crops(sizes, (float(start[0]), float(start[1])), crop_size, rng)  # S,2
    # One cv2.warpAffine per frame (zeros outside the image) applies the map that the tracks get below.
    out = np.stack(
        [
            cv2.warpAffine(
                frame,
                np.array([[scale[t, 0], 0, shift[t, 0]], [0, scale[t, 1], shift[t, 1]]]),
                (cw, ch),
                flags=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_CONSTANT,
                borderValue=0,
            )
            for t, frame in enumerate(rgbs)
        ]
    )  # S,ch,cw,3
    trajs = trajs * scale[:, None] + shift[:, None]  # S,N,2
    if rng.random() < 0.5:
        out, trajs = flip_clip(out, trajs, horizontal=True)
    if rng.random() < 0.5:
        out, trajs = flip_clip(out, trajs, horizontal=False)
    return np.ascontiguousarray(out), trajs.astype(np.float32)


def flip_clip(rgbs: np.ndarray, trajs: np.ndarray, horizontal: bool) -> tuple[np.ndarray, np.ndarray]:
    """Mirror the clip left-right (x -> W-1-x) or top-bottom (y -> H-1-y); exact for pixel centres."""
    S, H, W, _ = rgbs.shape
    trajs = trajs.astype(np.float32, copy=True)  # S,N,2
    if horizontal:
        trajs[..., 0] = W - 1 - trajs[..., 0]
        return np.ascontiguousarray(rgbs[:, :, ::-1]), trajs
    trajs[..., 1] = H - 1 - trajs[..., 1]
    return np.ascontiguousarray(rgbs[:, ::-1]), trajs


def _check_clip(rgbs: np.ndarray, trajs: np.ndarray, visibs: np.ndarray, valids: np.ndarray) -> None:
    if rgbs.ndim != 4 or rgbs.shape[-1] != 3 or rgbs.dtype != np.uint8:
        raise ValueError(f"rgbs must be S,H,W,3 uint8, got {rgbs.shape} {rgbs.dtype}")
    S = rgbs.shape[0]
    if trajs.ndim != 3 or trajs.shape[0] != S or trajs.shape[-1] != 2:
        raise ValueError(f"trajs must be S,N,2 with S={S}, got {trajs.shape}")
    for name, a in (("visibs", visibs), ("valids", valids)):
        if a.shape != trajs.shape[:2]:
            raise ValueError(f"{name} must be {trajs.shape[:2]}, got {a.shape}")


def augment_clip(
    rgbs: np.ndarray,
    trajs: np.ndarray,
    visibs: np.ndarray,
    valids: np.ndarray,
    crop_size: tuple[int, int],
    rng: np.random.Generator,
) -> ClipArrays:
    """The PointOdyssey training chain: photometric -> occluders -> time reversal (p=0.5) -> spatial
    augs (p=0.7, else an even choice of just_crop and just_resize). Output frames are exactly
    crop_size=(H,W); points that leave the crop keep their flags (callers filter them).
    """
    _check_clip(rgbs, trajs, visibs, valids)
    rgbs = photometric_clip(rgbs, rng)
    rgbs, visibs = erase_occluders(rgbs, trajs, visibs, rng)
    if rng.random() < 0.5:
        rgbs, trajs, visibs, valids = reverse_time(rgbs, trajs, visibs, valids)
    if rng.random() < 0.7:
        rgbs, trajs = spatial_augs(rgbs, trajs, visibs, crop_size, rng)
    elif rng.random() < 0.5:
        rgbs, trajs = just_crop(rgbs, trajs, crop_size, rng)
    else:
        rgbs, trajs = just_resize(rgbs, trajs, crop_size)
    return ClipArrays(rgbs, trajs, visibs.copy(), valids.copy())
