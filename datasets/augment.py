"""Clip augmentations: pure numpy functions on (S,H,W,3) uint8 frames and their tracks.

Every function takes and returns `rgbs` S,H,W,3 uint8, `trajs` S,N,2 float32 (x,y pixels),
`visibs` S,N and `valids` S,N, and draws randomness only from the `rng` it is given, so a clip is
a pure function of its seed. Tracks are transformed exactly as the pixels are: a resize by
W'/W, H'/H scales x,y by the same factors (pixel-centre convention of the official code).
"""

import cv2
import numpy as np


def resize_clip(rgbs: np.ndarray, trajs: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Resize every frame to size=(H',W') (bilinear) and scale the tracks with them."""
    S, H, W, _ = rgbs.shape
    h, w = size
    out = np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_LINEAR) for f in rgbs])  # S,h,w,3
    trajs = trajs * np.array([w / W, h / H], dtype=np.float32)  # S,N,2
    return out, trajs.astype(np.float32)


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
