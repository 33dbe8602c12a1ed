"""Procedural layered scenes with exact point tracks.

A scene is a textured background plane under a smooth camera homography plus several textured
foreground objects (ellipses, polygons, blobs) with their own smooth rotation, scale and translation.
Every layer is rendered by warping its texture with a 3x3 matrix (texture pixel -> frame pixel),
and its tracked points are projected with the very same matrix, so tracks are exact. Visibility is
read from the rendered instance map: a point is visible when it is inside the frame and the pixel
that holds it shows its own layer.

Depth is a layered 2.5-D model: the background sits at BG_DEPTH / camera_zoom and an object at
OBJ_DEPTH / object_scale, so a growing object is approaching the camera. Objects are painted far to
near in every frame. An object nearer than NEAR_DEPTH has passed the camera: it is not drawn and its
points are invalid (valids = 0) for those frames.

Scenes are written in the PointOdyssey layout by `write_sequence`, or streamed as training clips
by `SyntheticClips`.
"""

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from torch.utils.data import Dataset

from datasets.augment import photometric_clip
from datasets.sample import ClipSample

BACKGROUND_ID = 1  # instance id of the background in masks; objects are 2, 3, ...
BG_DEPTH = 40.0  # background depth at camera zoom 1 (scene units)
OBJ_DEPTH = 10.0  # object depth at object scale 1
NEAR_DEPTH = 4.0  # objects nearer than this (scale > 2.5) count as behind the camera
MAX_BG_FRAMES = 6  # largest background texture, in frame areas
MIN_SCENE_SIDE = 16  # pixels: the smallest frame side a scene is drawn at


@dataclass
class Layer:
    """One textured layer. `homs[t]` maps texture pixels (x,y) to frame pixels at frame t."""

    layer_id: int
    texture: np.ndarray  # h,w,3 uint8
    alpha: np.ndarray | None  # h,w uint8 (255 inside the shape); None = opaque background
    homs: np.ndarray  # S,3,3 float64
    depths: np.ndarray  # S float64
    points: np.ndarray  # P,2 float64, texture pixels


@dataclass
class Scene:
    height: int
    width: int
    layers: list[Layer]  # layers[0] is the background

    @property
    def num_frames(self) -> int:
        return self.layers[0].homs.shape[0]

    @property
    def focal(self) -> float:
        return float(self.width)

    @property
    def intrinsics(self) -> np.ndarray:
        """3,3 pinhole K with which `trajs_3d` projects to `trajs_2d`."""
        return np.array(
            [[self.focal, 0.0, self.width / 2], [0.0, self.focal, self.height / 2], [0.0, 0.0, 1.0]]
        )


@dataclass
class SceneTracks:
    trajs: np.ndarray  # S,N,2 float32, frame pixels x,y
    depths: np.ndarray  # S,N float32, camera z
    valids: np.ndarray  # S,N float32
    layer_ids: np.ndarray  # N int, instance id of each point's layer


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _value_noise(height: int, width: int, cell: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth colour noise with features of about `cell` pixels, zero mean, unit-ish scale."""
    gh = max(2, math.ceil(height / cell) + 1)
    gw = max(2, math.ceil(width / cell) + 1)
    mix = 0.7 + 0.5 * rng.normal(size=(3, 3))  # mostly luminance, some colour
    mix = (mix / np.linalg.norm(mix, axis=1, keepdims=True)).astype(np.float32)  # unit std per channel
    small = rng.standard_normal((gh * gw, 3)).astype(np.float32) @ mix  # gh*gw,3
    return cv2.resize(small.reshape(gh, gw, 3), (width, height), interpolation=cv2.INTER_CUBIC)  # H,W,3


def _gradient(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = xs * np.cos(angle) + ys * np.sin(angle)  # H,W
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1.0)
    c0, c1 = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
    return c0 + ramp[..., None] * (c1 - c0)  # H,W,3


def _draw_shapes(img: np.ndarray, feature_size: float, rng: np.random.Generator) -> None:
    """Draws random circles, rectangles, ellipses, lines and triangles in place."""
    height, width = img.shape[:2]
    count = int(height * width / feature_size**2 * rng.uniform(0.3, 1.2))
    kinds = rng.integers(0, 5, size=count)
    centres = rng.uniform(0, 1, size=(count, 2)) * (width, height)
    sizes = np.exp(rng.uniform(np.log(2.0), np.log(max(feature_size, 3.0)), size=count))
    colours = rng.integers(0, 256, size=(count, 3))
    filled = rng.random(count) < 0.6
    thick = rng.integers(1, 4, size=count)
    angles = rng.uniform(0, 360, size=count)
    offsets = rng.uniform(-1, 1, size=(count, 3, 2))
    for i in range(count):
        c = tuple(int(v) for v in centres[i])
        r = float(sizes[i])
        colour = tuple(int(v) for v in colours[i])
        t = -1 if filled[i] else int(thick[i])
        kind = kinds[i]
        if kind == 0:
            cv2.circle(img, c, max(int(r), 1), colour, t, cv2.LINE_AA)
        elif kind == 1:
            half = np.abs(offsets[i, 0]) * r + 1
            p0 = (int(c[0] - half[0]), int(c[1] - half[1]))
            p1 = (int(c[0] + half[0]), int(c[1] + half[1]))
            cv2.rectangle(img, p0, p1, colour, t)
        elif kind == 2:
            axes = (max(int(r), 1), max(int(r * abs(offsets[i, 0, 0])), 1))
            cv2.ellipse(img, c, axes, float(angles[i]), 0, 360, colour, t, cv2.LINE_AA)
        elif kind == 3:
            p1 = (int(c[0] + offsets[i, 0, 0] * 2 * r), int(c[1] + offsets[i, 0, 1] * 2 * r))
            cv2.line(img, c, p1, colour, int(thick[i]), cv2.LINE_AA)
        else:
            pts = (np.array(c) + offsets[i] * r).astype(np.int32)  # 3,2
            cv2.fillPoly(img, [pts], colour, cv2.LINE_AA)


def procedural_texture(height: int, width: int, feature_size: float, rng: np.random.Generator) -> np.ndarray:
    """A richly detailed H,W,3 uint8 RGB texture: gradient + multi-scale colour noise + random
    shapes + fine grain. `feature_size` is about the size in pixels of the largest shapes."""
    img = _gradient(height, width, rng)  # H,W,3 float32
    for rel, amp in ((0.08, 18), (0.25, 16), (0.7, 20), (2.0, 30)):
        cell = max(feature_size * rel * rng.uniform(0.7, 1.4), 2.0)
        img += rng.uniform(0.2, 1.0) * amp * _value_noise(height, width, cell, rng)
    img = np.clip(img, 0, 255).astype(np.uint8)
    _draw_shapes(img, feature_size, rng)
    grain = rng.uniform(3, 10) * _value_noise(height, width, 2.5, rng)  # H,W,3
    return np.clip(img + grain, 0, 255).astype(np.uint8)


def random_shape_mask(radius: float, rng: np.random.Generator) -> np.ndarray:
    """A (2r+4)^2 uint8 mask (255 inside) of an ellipse, a star-shaped polygon or a smooth blob."""
    size = int(2 * radius) + 4
    mask = np.zeros((size, size), np.uint8)
    centre = np.array([size - 1, size - 1]) / 2
    kind = rng.integers(0, 3)
    if kind == 0:
        axes = (max(int(radius), 2), max(int(radius * rng.uniform(0.35, 1.0)), 2))
        cv2.ellipse(mask, tuple(int(v) for v in centre), axes, rng.uniform(0, 360), 0, 360, 255, -1)
        return mask
    if kind == 1:
        n = int(rng.integers(3, 9))
        angles = (np.arange(n) + rng.uniform(-0.35, 0.35, size=n)) * 2 * np.pi / n
        radii = radius * rng.uniform(0.45, 1.0, size=n)
    else:
        n = 64
        angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
        k = np.arange(1, 5)[:, None]
        amps = rng.uniform(0, 0.25, size=(4, 1)) / k
        phases = rng.uniform(0, 2 * np.pi, size=(4, 1))
        wave = 1 + (amps * np.cos(k * angles + phases)).sum(0)  # n
        radii = radius * wave / wave.max()
    pts = centre + np.stack([radii * np.cos(angles), radii * np.sin(angles)], -1)  # n,2
    cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 255)
    return mask


def _smooth_path(num_frames: int, drift: float, wobble_speed: float, rng: np.random.Generator) -> np.ndarray:
    """S values starting at 0: a constant drift per frame plus two sinusoids whose speed peaks at
    `wobble_speed` per frame. Large slow wobbles carry objects out of the frame and back."""
    t = np.arange(num_frames, dtype=np.float64)
    out = drift * t
    for _ in range(2):
        period = rng.uniform(12, 80)
        amp = 0.5 * wobble_speed * period / (2 * np.pi)
        phase = rng.uniform(0, 2 * np.pi)
        out += amp * (np.sin(2 * np.pi * t / period + phase) - np.sin(phase))
    return out


def _translation(tx: np.ndarray, ty: np.ndarray) -> np.ndarray:
    mats = np.tile(np.eye(3), (len(tx), 1, 1))  # S,3,3
    mats[:, 0, 2] = tx
    mats[:, 1, 2] = ty
    return mats


def _shift(x: float, y: float) -> np.ndarray:
    return _translation(np.array([x]), np.array([y]))[0]  # 3,3


def _rotation_scale(theta: np.ndarray, scale: np.ndarray) -> np.ndarray:
    mats = np.tile(np.eye(3), (len(theta), 1, 1))  # S,3,3
    cos, sin = np.cos(theta) * scale, np.sin(theta) * scale
    mats[:, 0, 0], mats[:, 0, 1], mats[:, 1, 0], mats[:, 1, 1] = cos, -sin, sin, cos
    return mats


def _project(homs: np.ndarray, points: np.ndarray) -> np.ndarray:
    """homs S,3,3 applied to points P,2 -> S,P,2."""
    ph = np.concatenate([points, np.ones((len(points), 1))], 1)  # P,3
    out = np.einsum("sij,pj->spi", homs, ph)  # S,P,3
    return out[..., :2] / out[..., 2:]


def _view_bounds(homs: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """World x,y bounds (lo, hi), with an 8 px margin, of everything the frames of homs S,3,3 see."""
    corners = np.array([[0, 0], [width - 1, 0], [0, height - 1], [width - 1, height - 1]], np.float64)
    seen = _project(np.linalg.inv(homs), corners).reshape(-1, 2)  # S*4,2
    return np.floor(seen.min(0)) - 8, np.ceil(seen.max(0)) + 8


def _camera_homographies(
    num_frames: int, height: int, width: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """World -> frame homographies S,3,3 of a smoothly moving, rotating, zooming, tilting camera, its
    zoom S, and the world bounds lo, hi of the region it sees. Paths that would need a background texture
    larger than MAX_BG_FRAMES frames are shrunk, keeping texture synthesis fast."""
    dim = max(height, width)
    speed = _log_uniform(rng, 0.0005, 0.04) * dim
    direction = rng.uniform(0, 2 * np.pi)
    wobble = _log_uniform(rng, 0.0005, 0.02) * dim
    tx = _smooth_path(num_frames, speed * np.cos(direction), wobble, rng)
    ty = _smooth_path(num_frames, speed * np.sin(direction), wobble, rng)
    spin = np.deg2rad(rng.uniform(-0.4, 0.4)) * (rng.random() < 0.5)
    theta = _smooth_path(num_frames, spin, np.deg2rad(rng.uniform(0, 0.5)), rng)
    log_zoom = _smooth_path(num_frames, rng.uniform(-0.006, 0.006), rng.uniform(0, 0.01), rng)
    tilt = np.eye(3)
    tilt[2, :2] = rng.uniform(-0.25, 0.25, size=2) / dim
    shrink = 1.0
    while True:
        zoom = np.clip(np.exp(shrink * log_zoom), 0.7, 1.4)
        homs = _translation(shrink * tx + width / 2, shrink * ty + height / 2) @ _rotation_scale(theta, zoom)
        homs = homs @ tilt @ _shift(-width / 2, -height / 2)  # S,3,3
        lo, hi = _view_bounds(homs, height, width)
        if np.prod(hi - lo + 1) <= MAX_BG_FRAMES * height * width or shrink < 0.01:
            return homs, zoom, lo, hi
        shrink *= 0.7


def _background_layer(
    num_frames: int,
    height: int,
    width: int,
    num_points: int,
    point_frames: Sequence[int],
    rng: np.random.Generator,
) -> Layer:
    homs, zoom, lo, hi = _camera_homographies(num_frames, height, width, rng)
    tex_w, tex_h = (hi - lo).astype(int) + 1
    texture = procedural_texture(tex_h, tex_w, 0.08 * min(height, width), rng)
    homs = homs @ _shift(lo[0], lo[1])  # texture pixel -> world -> frame
    frames = rng.choice(np.asarray(point_frames), size=num_points)
    in_view = rng.uniform(0, 1, size=(num_points, 2)) * (width - 1, height - 1)  # P,2 frame pixels
    inv = np.linalg.inv(homs[frames])  # P,3,3
    ph = np.concatenate([in_view, np.ones((num_points, 1))], 1)  # P,3
    tex_pts = np.einsum("pij,pj->pi", inv, ph)  # P,3
    points = tex_pts[:, :2] / tex_pts[:, 2:]
    return Layer(BACKGROUND_ID, texture, None, homs, BG_DEPTH / zoom, points)


def _object_layer(
    layer_id: int, num_frames: int, height: int, width: int, num_points: int, rng: np.random.Generator
) -> Layer:
    dim = max(height, width)
    radius = rng.uniform(0.08, 0.25) * min(height, width)
    alpha = random_shape_mask(radius, rng)
    size = alpha.shape[0]
    texture = procedural_texture(size, size, 0.3 * radius, rng)

    speed = _log_uniform(rng, 0.001, 0.05) * dim
    direction = rng.uniform(0, 2 * np.pi)
    wobble = _log_uniform(rng, 0.001, 0.03) * dim
    cx = rng.uniform(-0.05, 1.05) * width + _smooth_path(num_frames, speed * np.cos(direction), wobble, rng)
    cy = rng.uniform(-0.05, 1.05) * height + _smooth_path(num_frames, speed * np.sin(direction), wobble, rng)
    theta = rng.uniform(0, 2 * np.pi) + _smooth_path(
        num_frames, np.deg2rad(rng.uniform(-3, 3)), np.deg2rad(rng.uniform(0, 3)), rng
    )
    log_scale = np.log(rng.uniform(0.6, 1.6)) + _smooth_path(
        num_frames, rng.uniform(-0.01, 0.01), rng.uniform(0, 0.03), rng
    )
    scale = np.clip(np.exp(log_scale), 0.45, 2.3)
    if rng.random() < 0.15:  # a fly-by: approaches, passes the camera for a few frames, comes back
        t = np.arange(num_frames)
        centre, width_t = rng.uniform(0.2, 0.8) * num_frames, rng.uniform(3.0, 8.0)
        scale = scale * np.exp(
            np.log(rng.uniform(3.0, 5.0) / scale.min()) * np.exp(-(((t - centre) / width_t) ** 2))
        )

    half = (size - 1) / 2
    homs = _translation(cx, cy) @ _rotation_scale(theta, scale) @ _shift(-half, -half)  # S,3,3
    core = cv2.erode(alpha, np.ones((3, 3), np.uint8))
    inside = np.argwhere((core if core.any() else alpha) > 0)[:, ::-1]  # K,2 x,y
    picks = inside[rng.integers(0, len(inside), size=num_points)]
    points = picks + rng.uniform(-0.5, 0.5, size=(num_points, 2))
    return Layer(layer_id, texture, alpha, homs, OBJ_DEPTH / scale, points)


def make_scene(
    num_frames: int,
    height: int,
    width: int,
    rng: np.random.Generator,
    num_points: int = 4096,
    point_frames: Sequence[int] | None = None,
) -> Scene:
    """A random scene: background plus 3-12 objects, with about `num_points` tracked points, half on
    the background (uniform in the views of `point_frames`, default all frames) and half on the
    objects (in proportion to their area)."""
    if num_frames < 1 or height < MIN_SCENE_SIDE or width < MIN_SCENE_SIDE:
        raise ValueError(
            f"scene needs >= 1 frame and >= {MIN_SCENE_SIDE}x{MIN_SCENE_SIDE} pixels, "
            f"got {num_frames} frames of {height}x{width}"
        )
    frames = range(num_frames) if point_frames is None else point_frames
    num_bg = num_points - num_points // 2
    layers = [_background_layer(num_frames, height, width, num_bg, frames, rng)]
    num_objects = int(rng.integers(3, 13))
    areas = rng.uniform(0.5, 1.5, size=num_objects)
    counts = np.maximum((num_points // 2) * areas / areas.sum(), 1).astype(int)
    for k in range(num_objects):
        layers.append(_object_layer(BACKGROUND_ID + 1 + k, num_frames, height, width, int(counts[k]), rng))
    return Scene(height, width, layers)


def _paste_object(rgb: np.ndarray, inst: np.ndarray, layer: Layer, hom: np.ndarray) -> None:
    h, w = layer.alpha.shape
    corners = _project(hom[None], np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]], np.float64))[0]
    x0, y0 = np.maximum(np.floor(corners.min(0)).astype(int) - 1, 0)
    x1, y1 = np.minimum(np.ceil(corners.max(0)).astype(int) + 2, (rgb.shape[1], rgb.shape[0]))
    if x1 <= x0 or y1 <= y0:
        return
    local = (_shift(-x0, -y0) @ hom)[:2]  # 2,3
    size = (int(x1 - x0), int(y1 - y0))
    tex = cv2.warpAffine(layer.texture, local, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    alpha = cv2.warpAffine(layer.alpha, local, size, flags=cv2.INTER_LINEAR, borderValue=0)
    weight = alpha.astype(np.float32) / 255
    roi = rgb[y0:y1, x0:x1]
    roi[...] = cv2.blendLinear(tex, roi, weight, 1 - weight)
    inst[y0:y1, x0:x1][alpha >= 128] = layer.layer_id


def render_frame(scene: Scene, t: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame t: rgb H,W,3 uint8 and the instance map H,W uint8 (1 = background, objects 2..)."""
    bg = scene.layers[0]
    size = (scene.width, scene.height)
    rgb = cv2.warpPerspective(
        bg.texture, bg.homs[t], size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
    )
    inst = np.full((scene.height, scene.width), BACKGROUND_ID, np.uint8)
    objects = [layer for layer in scene.layers[1:] if layer.depths[t] >= NEAR_DEPTH]
    for layer in sorted(objects, key=lambda layer: -layer.depths[t]):
        _paste_object(rgb, inst, layer, layer.homs[t])
    return rgb, inst


def iter_frames(scene: Scene) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for t in range(scene.num_frames):
        yield render_frame(scene, t)


def scene_tracks(scene: Scene) -> SceneTracks:
    trajs, depths, valids, ids = [], [], [], []
    for layer in scene.layers:
        P = len(layer.points)
        trajs.append(_project(layer.homs, layer.points))  # S,P,2
        depths.append(np.repeat(layer.depths[:, None], P, 1))  # S,P
        valids.append(np.repeat((layer.depths >= NEAR_DEPTH)[:, None], P, 1))  # S,P
        ids.append(np.full(P, layer.layer_id))
    return SceneTracks(
        trajs=np.concatenate(trajs, 1).astype(np.float32),
        depths=np.concatenate(depths, 1).astype(np.float32),
        valids=np.concatenate(valids, 1).astype(np.float32),
        layer_ids=np.concatenate(ids),
    )


def visible_in(inst: np.ndarray, trajs: np.ndarray, valids: np.ndarray, layer_ids: np.ndarray) -> np.ndarray:
    """N float32 visibility in one frame: valid, inside [0,W-1]x[0,H-1], and the pixel of the instance map
    `inst` (H,W) that holds the point shows the point's own layer. Pixel k spans [k-0.5, k+0.5), so a
    coordinate halfway between two pixel centres belongs to the higher one."""
    H, W = inst.shape
    x, y = trajs[:, 0], trajs[:, 1]
    inside = (x >= 0) & (x <= W - 1) & (y >= 0) & (y <= H - 1) & (valids > 0)
    xi = np.clip(np.floor(x + 0.5), 0, W - 1).astype(np.intp)
    yi = np.clip(np.floor(y + 0.5), 0, H - 1).astype(np.intp)
    return (inside & (inst[yi, xi] == layer_ids)).astype(np.float32)


def write_sequence(scene: Scene, seq_dir: Path, schema: str = "v1.2", jpeg_quality: int = 90) -> None:
    """Write `scene` into `seq_dir` in the PointOdyssey layout: rgbs/rgb_%05d.jpg, masks/mask_%05d.png
    (instance ids, 1 = background), then the annotations (last, so an interrupted write leaves no
    annotation file).

    Args:
        schema: "v1.2" writes anno.npz with trajs_2d S,N,2, trajs_3d S,N,3 (camera frame: layer depth as
            z, projecting to trajs_2d with `intrinsics`), visibs S,N, valids S,N, intrinsics S,3,3 and
            extrinsics S,4,4 (identity), and info.npz with the shape of trajs_3d. "v1.0" writes
            annotations.npz with trajs_2d, trajs_3d, the same intrinsics and extrinsics, and visibilities
            S,N (0 occluded or out of view, 1 visible, 2 invalid).
        jpeg_quality: the JPEG quality of the rgb frames.
    """
    if schema not in ("v1.2", "v1.0"):
        raise ValueError(f"schema must be 'v1.2' or 'v1.0', got {schema!r}")
    seq_dir = Path(seq_dir)
    (seq_dir / "rgbs").mkdir(parents=True, exist_ok=True)
    (seq_dir / "masks").mkdir(parents=True, exist_ok=True)
    tracks = scene_tracks(scene)
    visibs = np.zeros_like(tracks.valids)  # S,N
    for t, (rgb, inst) in enumerate(iter_frames(scene)):
        cv2.imwrite(
            str(seq_dir / "rgbs" / f"rgb_{t:05d}.jpg"),
            rgb[..., ::-1],
            [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality],
        )
        cv2.imwrite(str(seq_dir / "masks" / f"mask_{t:05d}.png"), inst)
        visibs[t] = visible_in(inst, tracks.trajs[t], tracks.valids[t], tracks.layer_ids)

    S = scene.num_frames
    K = scene.intrinsics
    z = tracks.depths
    x = (tracks.trajs[..., 0] - K[0, 2]) * z / K[0, 0]
    y = (tracks.trajs[..., 1] - K[1, 2]) * z / K[1, 1]
    trajs_3d = np.stack([x, y, z], -1).astype(np.float32)  # S,N,3
    cams = {
        "intrinsics": np.repeat(K[None], S, 0).astype(np.float32),  # S,3,3
        "extrinsics": np.repeat(np.eye(4)[None], S, 0).astype(np.float32),  # S,4,4
    }
    if schema == "v1.2":
        np.savez(seq_dir / "info.npz", trajs_3d=np.array(trajs_3d.shape))
        np.savez_compressed(
            seq_dir / "anno.npz",
            trajs_2d=tracks.trajs,
            trajs_3d=trajs_3d,
            visibs=visibs,
            valids=tracks.valids,
            **cams,
        )
    else:
        visibilities = np.where(tracks.valids > 0, visibs, 2).astype(np.float32)  # S,N
        np.savez_compressed(
            seq_dir / "annotations.npz",
            trajs_2d=tracks.trajs,
            trajs_3d=trajs_3d,
            visibilities=visibilities,
            **cams,
        )


def select_points(
    candidates: np.ndarray, layer_ids: np.ndarray, N: int, rng: np.random.Generator
) -> np.ndarray:
    """Up to N indices of candidate points (bool P), spread over layers: a layer's share grows with the
    square root of its candidate count, so small objects are not swamped by the background."""
    idx = np.flatnonzero(candidates)
    if len(idx) == 0:
        return idx
    _, inverse, counts = np.unique(layer_ids[idx], return_inverse=True, return_counts=True)
    weights = 1.0 / np.sqrt(counts[inverse])
    return rng.choice(idx, size=min(N, len(idx)), replace=False, p=weights / weights.sum())


class SyntheticClips(Dataset):
    """Training clips rendered on the fly at crop_size: item i of epoch e is a pure function of
    (seed, e, i). N points visible and valid at frame 0 are picked over the objects and background;
    padding (rarely needed) is all zero. With use_augs the photometric augmentations of
    datasets/augment.py are applied (the tracks are unchanged by them)."""

    def __init__(
        self,
        S: int = 36,
        N: int = 128,
        crop_size: tuple[int, int] = (256, 384),
        length: int = 10000,
        seed: int = 0,
        use_augs: bool = False,
    ) -> None:
        if S < 2 or N < 1 or length < 1:
            raise ValueError(f"need S >= 2, N >= 1, length >= 1; got S={S}, N={N}, length={length}")
        self.S, self.N, self.crop_size, self.length, self.seed = S, N, tuple(crop_size), length, seed
        self.use_augs = use_augs
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> ClipSample:
        """A fresh scene: rgbs S,H,W,3 uint8 at crop_size, trajs S,N,2 (x,y pixels), visibs/valids S,N,
        every point visible and valid at frame 0."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} clips")
        rng = np.random.default_rng([self.seed, self.epoch, index])
        H, W = self.crop_size
        scene = make_scene(self.S, H, W, rng, num_points=6 * self.N, point_frames=(0,))
        tracks = scene_tracks(scene)
        rgbs = np.empty((self.S, H, W, 3), np.uint8)
        visibs = np.empty_like(tracks.valids)  # S,P
        for t, (rgb, inst) in enumerate(iter_frames(scene)):
            rgbs[t] = rgb
            visibs[t] = visible_in(inst, tracks.trajs[t], tracks.valids[t], tracks.layer_ids)
        if self.use_augs:
            rgbs = photometric_clip(rgbs, rng)
        keep = select_points(visibs[0] * tracks.valids[0] > 0, tracks.layer_ids, self.N, rng)
        trajs = np.zeros((self.S, self.N, 2), np.float32)
        vis = np.zeros((self.S, self.N), np.float32)
        val = np.zeros((self.S, self.N), np.float32)
        n = len(keep)
        trajs[:, :n], vis[:, :n], val[:, :n] = tracks.trajs[:, keep], visibs[:, keep], tracks.valids[:, keep]
        return ClipSample(rgbs=rgbs, trajs=trajs, visibs=vis, valids=val)
