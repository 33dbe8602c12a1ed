"""What a tracking run writes, shared by demo.py and app.py: the tracks as .npz and .csv in the video's
pixels, and the video with the tracks drawn (a dot with a fading trail per point, coloured by where it
starts; hollow while the visibility head says it is hidden), streamed chunk by chunk."""

import csv
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from tracking.predictor import Prediction
from utils.video import VideoWriter, read_video
from utils.vis import colors_by_position, draw_tracks

CSV_COLUMNS = ("frame", "point", "x", "y", "visible", "confidence")


def point_radius(height: int, width: int) -> int:
    """The drawn dots' radius in pixels: about 1/160 of the frame's short side, at least 3."""
    return max(3, round(min(height, width) / 160))


def _chunks(frames: Iterator[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """Consecutive stacks of up to `size` frames, T,H,W,3."""
    chunk = []
    for frame in frames:
        chunk.append(frame)
        if len(chunk) == size:
            yield np.stack(chunk)
            chunk = []
    if chunk:
        yield np.stack(chunk)


def even_frames(frames: np.ndarray) -> np.ndarray:
    """Pad T,H,W,3 frames by one edge row/column where H or W is odd (H.264 needs even sizes)."""
    _, H, W, _ = frames.shape
    return np.pad(frames, ((0, 0), (0, H % 2), (0, W % 2), (0, 0)), mode="edge")


def drawn_frames(
    filename: str | Path,
    tracks: np.ndarray,
    visible: np.ndarray | None,
    colors: np.ndarray,
    trail: int,
    radius: int,
    chunk: int,
) -> Iterator[np.ndarray]:
    """The video's first T frames with the tracks T,N,2 drawn (hollow where `visible` T,N is False),
    streamed in chunks of frames T',H,W,3. Each chunk is drawn after the last `trail` frames of the previous
    one so the trails run on."""
    history = None  # the last frames of the previous chunk
    start = 0
    for frames in _chunks(read_video(filename, max_frames=len(tracks)), chunk):
        ctx = 0 if history is None else len(history)
        both = frames if history is None else np.concatenate([history, frames])  # ctx+T',H,W,3
        end = start + len(frames)
        vis = None if visible is None else visible[start - ctx : end]
        drawn = draw_tracks(both, tracks[start - ctx : end], vis, colors=colors, trail=trail, radius=radius)
        yield drawn[ctx:]
        history = both[max(len(both) - trail, 0) :] if trail > 0 else None
        start = end


def write_tracks_video(
    path: str | Path,
    filename: str | Path,
    result: Prediction,
    queries: np.ndarray,
    size: tuple[int, int],
    fps: float,
    trail: int = 8,
    chunk: int = 32,
    on_chunk: Callable[[np.ndarray], None] | None = None,
) -> int:
    """Writes the first len(result.tracks) frames of the video `filename` (H,W = `size`) with the tracks
    drawn to the mp4 `path`, colours by the queries' N,3 t,x,y positions; `on_chunk` sees each drawn chunk
    T',H,W,3. Returns the count of frames written; the mp4 is closed, and plays, even when interrupted."""
    height, width = size
    tracks = np.asarray(result.tracks)  # T,N,2
    visible = None if result.visibility is None else np.asarray(result.visibility) > 0.5  # T,N
    colors = colors_by_position(np.asarray(queries)[:, 1:], height, width)  # N,3
    radius = point_radius(height, width)
    with VideoWriter(path, fps=fps) as writer:
        for frames in drawn_frames(filename, tracks, visible, colors, trail, radius, chunk):
            for frame in even_frames(frames):
                writer.write(frame)
            if on_chunk is not None:
                on_chunk(frames)
    return writer.num_frames


def _replace(path: Path, write: Callable[[Path], None]) -> None:
    """write(temporary path), then rename it to `path`: a reader never sees half a file."""
    partial = path.with_name(path.name + ".partial")
    write(partial)
    os.replace(partial, path)


def save_npz(path: str | Path, result: Prediction, queries: np.ndarray, fps: float) -> None:
    """tracks T,N,2, queries N,3 (t,x,y), fps, num_frames and, with a visibility head, visibility and
    confidence T,N (probabilities), all in the video's pixels."""
    tracks = np.asarray(result.tracks, dtype=np.float32)
    fields = {
        "tracks": tracks,
        "queries": np.asarray(queries, dtype=np.float32),
        "fps": np.float32(fps),
        "num_frames": np.int64(len(tracks)),
    }
    if result.visibility is not None:
        fields |= {"visibility": np.asarray(result.visibility), "confidence": np.asarray(result.confidence)}

    def write(partial: Path) -> None:
        with open(partial, "wb") as f:
            np.savez(f, **fields)

    _replace(Path(path), write)


def save_csv(path: str | Path, result: Prediction) -> None:
    """One row per frame and point: frame, point, x, y (video pixels), visible (0/1) and confidence (a
    probability); the last two are empty for a model without the visibility head."""
    tracks = np.asarray(result.tracks)  # T,N,2
    T, N, _ = tracks.shape
    frame, point = np.meshgrid(np.arange(T), np.arange(N), indexing="ij")  # T,N each
    columns = [frame.ravel().tolist(), point.ravel().tolist()]
    columns += [[repr(v) for v in tracks[..., i].ravel().tolist()] for i in (0, 1)]
    if result.visibility is None:
        columns += [[""] * (T * N)] * 2
    else:
        columns.append((np.asarray(result.visibility) > 0.5).astype(int).ravel().tolist())
        columns.append([f"{c:.4f}" for c in np.asarray(result.confidence).ravel().tolist()])

    def write(partial: Path) -> None:
        with open(partial, "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(CSV_COLUMNS)
            out.writerows(zip(*columns))

    _replace(Path(path), write)
