"""Tracking a stream as it arrives: a camera, a stream URL or a video file read frame by frame through OpenCV,
and the loop that pushes its frames into an OnlineTracker and writes the drawn mp4 and the tracks as it goes.

    record_stream("0", tracker, "out")           # camera 0 -> out/camera0_tracks.mp4 and .npz
    record_stream("rtsp://host/live", tracker, "out", queries=rows)   # rows t,x,y: added when frame t arrives

A stream that stops delivering frames, a frame of another size, Ctrl-C or SIGTERM ends the loop; the frames
received until then get their final tracks, and the mp4 and the npz are finished with them before an error
is raised.
"""

import math
import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import NamedTuple, Protocol

import cv2
import numpy as np
from tqdm import tqdm

from tracking.online import OnlineTracker, TrackFrames
from tracking.outputs import point_radius, save_npz
from tracking.predictor import PipsTracker, Prediction, check_queries, grid_queries
from utils.interrupt import StopRequest
from utils.video import VideoWriter
from utils.vis import colors_by_position, draw_tracks

STALL_SECONDS = 10.0  # a stream that delivers no frame for this long has stopped
QUEUE_FRAMES = 4  # frames read ahead of the tracker


class Capture(Protocol):
    """What a stream is read from: cv2.VideoCapture, or anything with its read and release."""

    def read(self) -> tuple[bool, np.ndarray | None]: ...

    def release(self) -> None: ...


class FrameStream:
    """The frames of a capture as H,W,3 uint8 RGB, read on a thread of their own, so that a stream that
    stops delivering ends with an OSError after `stall_seconds` instead of hanging.

    A capture whose read fails ends the stream: the normal end of a file or of a stream URL, an OSError for a
    camera (`camera=True`), which does not end by itself.
    """

    def __init__(
        self, capture: Capture, name: str, camera: bool = False, stall_seconds: float = STALL_SECONDS
    ) -> None:
        self.capture, self.name, self.camera = capture, name, camera
        self.stall_seconds = stall_seconds
        fps = capture.get(cv2.CAP_PROP_FPS) if hasattr(capture, "get") else 0.0
        self.fps = fps if math.isfinite(fps) and fps > 0 else None  # None: the capture does not say
        self.frames_read = 0
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE_FRAMES)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read_all(self) -> None:
        """The reading thread: frames (BGR) into the queue, then None at the end or the error met."""
        try:
            while not self._stop.is_set():
                try:
                    ok, bgr = self.capture.read()
                except cv2.error as err:
                    ok, bgr = False, err
                item = bgr if ok or isinstance(bgr, Exception) else None
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if not ok:
                    return
        finally:
            self.capture.release()

    def __iter__(self) -> Iterator[np.ndarray]:
        if self._thread is None:
            self._thread = threading.Thread(target=self._read_all, name=f"read {self.name}", daemon=True)
            self._thread.start()
        while True:
            try:
                item = self._queue.get(timeout=self.stall_seconds)
            except queue.Empty:
                stalled = f"delivered no frame for {self.stall_seconds:g} s after {self.frames_read} frames"
                raise OSError(f"{self.name} {stalled}") from None
            if isinstance(item, Exception):
                raise OSError(f"{self.name} failed after {self.frames_read} frames: {item}")
            if item is None:
                if self.camera:
                    raise OSError(f"{self.name} stopped delivering frames after {self.frames_read} frames")
                return
            self.frames_read += 1
            yield np.ascontiguousarray(item[..., ::-1])  # H,W,3 RGB

    def close(self) -> None:
        """Stop reading; the reading thread releases the capture."""
        self._stop.set()
        if self._thread is None:
            self.capture.release()
            return
        while not self._queue.empty():
            self._queue.get_nowait()
        self._thread.join(timeout=1.0)


def stream_name(source: str) -> str:
    """The stem of the output files: camera<index>, the URL's last part, or the file's stem."""
    if source.isdigit():
        return f"camera{source}"
    return Path(source.rstrip("/").split("?")[0]).stem or "stream"


def open_stream(source: str, stall_seconds: float = STALL_SECONDS) -> FrameStream:
    """A camera (a device index such as "0"), a stream URL (anything with ://) or a video file, opened by
    OpenCV and read as a stream; OSError naming it when it cannot be opened."""
    if source.isdigit():
        name, target, camera = f"camera {source}", int(source), True
    elif "://" in source:
        name, target, camera = f"stream {source}", source, False
    else:
        path = Path(source)
        if path.is_dir():
            raise ValueError(f"a stream is a camera, a stream URL or a video file, not the folder {path}")
        if not path.is_file():
            raise FileNotFoundError(f"no such video file: {path}")
        name, target, camera = f"video file {path}", str(path), False
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # the error below says it instead
    try:
        capture = cv2.VideoCapture(target)
    finally:
        cv2.utils.logging.setLogLevel(level)
    if not capture.isOpened():
        capture.release()
        raise OSError(f"cannot open {name}")
    return FrameStream(capture, name, camera, stall_seconds)


def has_display() -> bool:
    """Whether a window can be shown (a desktop, or an X11/Wayland display on Linux)."""
    return sys.platform in ("win32", "darwin") or any(
        os.environ.get(v) for v in ("DISPLAY", "WAYLAND_DISPLAY")
    )


class StreamRecorder:
    """Draws each frame once its tracks are final and writes it to the mp4 at once; the tracks of the whole
    stream go to the npz at `close`. Frames wait here until their tracks are final (S-1 frames).

    The npz holds what the offline demo's does: tracks T,N,2 (NaN before a point's own frame), queries N,3,
    fps, and with a visibility head visibility and confidence T,N. Points are the query rows, in their order.

    Args:
        fps: the stream's frame rate, stored in the npz. writer_fps: the mp4's (None = fps).
        show: also show the drawn frames in a window.
    """

    def __init__(
        self,
        video_path: Path,
        npz_path: Path,
        fps: float,
        writer_fps: float | None = None,
        trail: int = 8,
        show: bool = False,
    ) -> None:
        self.video_path, self.npz_path, self.fps = video_path, npz_path, fps
        self.trail = trail
        self.show = show
        self.started = False
        self._writer = VideoWriter(video_path, fps=writer_fps or fps)
        self._waiting: deque[np.ndarray] = deque()  # frames whose tracks are not final yet, H,W,3 each
        self._context: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None = None  # the trail drawn last
        self._tracks: list[np.ndarray] = []  # F,N,2 per write, in row order
        self._vis: list[np.ndarray] = []  # F,N
        self._conf: list[np.ndarray] = []  # F,N
        self._row_of_id: list[int] = []

    def start(self, rows: np.ndarray, height: int, width: int) -> None:
        """The query rows N,3 (t,x,y) of the stream, whose size the first frame gives."""
        self.rows = rows
        self.colors = colors_by_position(rows[:, 1:], height, width)  # N,3
        self.radius = point_radius(height, width)
        self.started = True

    def arrived(self, frame: np.ndarray) -> None:
        self._waiting.append(frame)

    def added(self, rows: np.ndarray, ids: np.ndarray) -> None:
        """The tracker's points `ids` (the next ids, in order) are the query rows `rows`."""
        self._row_of_id += rows.tolist()

    def _by_row(self, values: np.ndarray) -> np.ndarray:
        """F,N',... in the tracker's columns -> F,N,... in query rows (NaN for rows not added yet)."""
        out = np.full((len(values), len(self.rows), *values.shape[2:]), np.nan, np.float32)
        out[:, self._row_of_id[: values.shape[1]]] = values
        return out

    def write(self, final: TrackFrames) -> None:
        """Draw and write the frames whose tracks became final."""
        if len(final.frames) == 0:
            return
        frames = np.stack([self._waiting.popleft() for _ in final.frames])  # F,H,W,3
        tracks = self._by_row(final.tracks)  # F,N,2
        self._tracks.append(tracks)
        visible = None
        if final.visibility is not None:
            self._vis.append(self._by_row(final.visibility))
            self._conf.append(self._by_row(final.confidence))
            visible = self._vis[-1] > 0.5  # F,N
        for frame in self._draw(frames, tracks, visible):
            H, W, _ = frame.shape
            self._writer.write(np.pad(frame, ((0, H % 2), (0, W % 2), (0, 0)), mode="edge"))  # H.264: even
            if self.show:
                self._show(frame)

    def _draw(self, frames: np.ndarray, tracks: np.ndarray, visible: np.ndarray | None) -> np.ndarray:
        """The frames F,H,W,3 with their tracks drawn, the trails running on from the frames drawn before."""
        context = 0
        if self._context is not None:
            before_frames, before_tracks, before_visible = self._context
            context = len(before_frames)
            frames = np.concatenate([before_frames, frames])
            tracks = np.concatenate([before_tracks, tracks])
            visible = None if visible is None else np.concatenate([before_visible, visible])
        drawn = draw_tracks(frames, tracks, visible, self.colors, self.trail, self.radius)
        keep = slice(max(len(frames) - self.trail, 0), None)
        self._context = (frames[keep], tracks[keep], None if visible is None else visible[keep])
        return drawn[context:]

    def _show(self, frame: np.ndarray) -> None:
        try:
            cv2.imshow(self.video_path.name, np.ascontiguousarray(frame[..., ::-1]))
            cv2.waitKey(1)
        except cv2.error:  # an OpenCV built without a GUI
            self.show = False

    def close(self) -> None:
        """Finish the mp4 and write the npz (atomically)."""
        if self.show:
            cv2.destroyAllWindows()
        self._writer.close()
        visibility = np.concatenate(self._vis) if self._vis else None
        confidence = np.concatenate(self._conf) if self._conf else None
        result = Prediction(np.concatenate(self._tracks), visibility, confidence)
        save_npz(self.npz_path, result, self.rows, self.fps)


class StreamSummary(NamedTuple):
    frames: int  # frames tracked
    points: int  # points added
    interrupted: bool  # ended by Ctrl-C or SIGTERM
    seconds: float


def _query_rows(
    frame: np.ndarray, queries: np.ndarray | None, grid_size: int | None, image_size: tuple[int, int]
) -> np.ndarray:
    """The stream's query rows N,3 (t,x,y), checked against the first frame's size."""
    H, W = np.shape(frame)[:2]
    if queries is None:
        return grid_queries(grid_size, H, W, image_size).numpy()
    rows = np.asarray(queries, np.float32)
    if rows.ndim != 2 or rows.shape[1] != 3 or len(rows) == 0:
        raise ValueError(f"queries must be N,3 rows of t,x,y (N >= 1), got shape {rows.shape}")
    T = int(np.nan_to_num(rows[:, 0], posinf=0).max()) + 1  # a stream has no last frame: t is only >= 0
    return check_queries(rows, max(T, 1), H, W).numpy()


def track_stream(
    frames: Iterable[np.ndarray],
    online: OnlineTracker,
    recorder: StreamRecorder,
    queries: np.ndarray | None = None,
    grid_size: int | None = None,
    max_frames: int | None = None,
) -> StreamSummary:
    """Push the frames into `online` as they come, add the query rows (t,x,y) when frame t arrives (or a
    grid_size^2 grid at frame 0) and record the final tracks; `max_frames` stops after that many frames.

    Ctrl-C or SIGTERM (in the main thread) ends the stream after the frame under way, as if it had ended
    there; a second one interrupts at once. An OSError or ValueError (the stream failed, a frame of another
    size) ends it too, and is raised again, naming what was written, once the recorder is closed.
    """
    if (queries is None) == (grid_size is None):
        raise ValueError("give exactly one of queries (N,3 rows of t,x,y) and grid_size")
    began = time.perf_counter()
    error = None
    with StopRequest(quit_at_once=False) as stop:
        try:
            for t, frame in enumerate(frames):
                if t == 0:
                    rows = _query_rows(frame, queries, grid_size, online.image_size)  # N,3
                    pending = {int(s): np.flatnonzero(rows[:, 0] == s) for s in np.unique(rows[:, 0])}
                step = online.push(frame)
                if t == 0:
                    recorder.start(rows, online.height, online.width)
                recorder.arrived(frame)
                if t in pending:
                    added = pending.pop(t)
                    recorder.added(added, online.add_queries(rows[added, 1:]))
                recorder.write(step.final)
                if stop.requested or (max_frames is not None and t + 1 >= max_frames):
                    break
        except (OSError, ValueError) as err:
            if not recorder.started:
                raise
            error = err
    if recorder.started:
        try:
            recorder.write(online.flush().final)
        finally:
            recorder.close()
    if error is not None:
        where = f"{recorder.video_path} and {recorder.npz_path}"
        raise type(error)(f"{error}; the {online.num_frames} frames before it are in {where}") from error
    return StreamSummary(online.num_frames, online.num_points, stop.requested, time.perf_counter() - began)


def record_stream(
    source: str,
    tracker: PipsTracker,
    out_dir: str | Path,
    queries: np.ndarray | None = None,
    grid_size: int | None = None,
    fps: float = 0.0,
    trail: int = 8,
    max_frames: int | None = None,
    show: bool | None = None,
    log: Callable[[str], None] = print,
) -> StreamSummary:
    """Track a camera, stream URL or video file (see open_stream) as it arrives, writing
    <out_dir>/<name>_tracks.mp4 as it goes and <name>_tracks.npz at the end (see StreamRecorder).

    Args:
        fps: the mp4's frame rate; 0 = the stream's (24 where it does not say).
        show: a live window of the drawn frames; None = where a display exists.
    """
    stream = open_stream(source)
    try:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        name = stream_name(source)
        recorder = StreamRecorder(
            out / f"{name}_tracks.mp4",
            out / f"{name}_tracks.npz",
            fps=stream.fps or fps or 24.0,
            writer_fps=fps or None,
            trail=trail,
            show=has_display() if show is None else show,
        )
        online = OnlineTracker(tracker)
        log(f"tracking {stream.name} as it arrives; tracks are final {tracker.S - 1} frames behind")
        with tqdm(stream, desc="tracking", unit="frame") as frames:
            summary = track_stream(frames, online, recorder, queries, grid_size, max_frames)
    finally:
        stream.close()
    ended = "stopped on Ctrl-C/SIGTERM" if summary.interrupted else "the stream ended"
    speed = summary.frames / max(summary.seconds, 1e-9)
    tracked = f"{summary.points} points through {summary.frames} frames in {summary.seconds:.1f} s"
    log(f"{ended}: tracked {tracked} ({speed:.2f} frames/s)")
    log(f"wrote {recorder.video_path} and {recorder.npz_path}")
    return summary
