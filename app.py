"""A web page to try PIPs++: upload a video (or take the example), click points on any frame, run, watch the
tracks and download them.

python app.py                                   # http://127.0.0.1:7860, the reference model if present
python app.py --port 8080 --host 0.0.0.0        # reachable from other machines
python app.py --image_size 320,576 --iters 8    # the page's default settings

The page: a video (upload, or the bundled example that the synthetic generator makes on first start), a
frame slider, the frame to click on (each click adds a query point at that frame; undo and clear), or a grid
of points at frame 0 where none is clicked, the model's settings (the demo's defaults for this machine:
tracking/settings.py), and a run with a progress bar. It shows the video with the tracks drawn and offers
the tracks as .npz and .csv in the video's pixels (tracking/outputs.py). The tracking is PipsTracker's: a
download equals PipsTracker's tracks for the same queries. Without the reference model the page says so
and offers random weights for a try.
"""

import math
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import torch

from tracking.frames import MIN_SIDE, check_size, require_size
from tracking.onnx_backend import use_onnxruntime
from tracking.onnx_export import cache_dir, cached_export
from tracking.outputs import point_radius, save_csv, save_npz, write_tracks_video
from tracking.predictor import PipsTracker, build_model, check_queries, grid_queries
from tracking.settings import FULL_SETTING, cpu_setting_line, setting_for
from utils.checkpoint import REFERENCE_DIR
from utils.config import ERROR_EXIT, knob, one_line, require, run
from utils.dist import pick_device
from utils.interrupt import StopRequest
from utils.video import read_video, video_info, write_video
from utils.vis import colors_by_position

SHOWN_SIDES = (640, 1280)  # frames are shown scaled so that their long side lies in here (clicks scaled back)
EXAMPLE_NAME = "pips2_example.mp4"


@dataclass(frozen=True)
class AppConfig:
    host: str = knob("127.0.0.1", "address to serve on; 0.0.0.0 = every network interface")
    port: int = knob(7860, "port to serve on")
    init_ckpt: str = knob(REFERENCE_DIR, "checkpoint file, or folder of model-*.pth; absent = random weights")
    device: str = knob("", "cpu, cuda, cuda:1, ...; '' = the best available")
    runtime: Literal["auto", "torch", "onnxruntime"] = knob(
        "auto", "where the network runs: auto = onnxruntime on a CPU where installed, else PyTorch"
    )
    S: int | None = knob(None, "the page's default frames per window (None = the demo's for this machine)")
    iters: int | None = knob(None, "the page's default refinement iterations (None = the demo's)")
    image_size: tuple[int, int] | None = knob(
        None, "the page's default H,W for the model (None = the demo's)"
    )
    max_frames: int = knob(600, "longest video the page takes, in frames")
    max_points: int = knob(4096, "most points a run may track (clicked or grid)")
    share: bool = knob(False, "also serve through a temporary public gradio.live link")

    def __post_init__(self) -> None:
        require(1 <= self.port <= 65535, "port", "in 1..65535", self.port)
        require(self.S is None or self.S >= 2, "S", "at least 2", self.S)
        require(self.iters is None or self.iters >= 1, "iters", "at least 1", self.iters)
        require(self.max_frames >= 2, "max_frames", "at least 2", self.max_frames)
        require(self.max_points >= 1, "max_points", "at least 1", self.max_points)
        require_size(self.image_size, least=MIN_SIDE)


class PageError(ValueError):
    """Bad input on the page: its message is shown there and the app keeps serving."""


@dataclass
class Clip:
    """The video on the page: its file, size and frame rate, its frames as shown (JPEG bytes), and the
    query points clicked so far as t,x,y rows in the video's pixels."""

    path: str
    num_frames: int
    height: int
    width: int
    fps: float
    shown: list[bytes]
    scale: float  # shown pixels per video pixel
    shown_size: tuple[int, int]  # H,W of the frames as shown
    points: list[tuple[int, float, float]]


def make_example(folder: Path) -> Path:
    """A 48-frame 270x480 video of a procedural scene (the synthetic generator's), written once."""
    from datasets.synthetic import iter_frames, make_scene

    path = folder / EXAMPLE_NAME
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        scene = make_scene(48, 270, 480, np.random.default_rng(7), num_points=16)
        frames = np.stack([rgb for rgb, _ in iter_frames(scene)])
        partial = path.with_name("partial_" + path.name)
        write_video(partial, frames, fps=12)
        partial.replace(path)
    return path


def open_clip(path: str | None, limit: int) -> Clip:
    """The page's Clip of the video at `path`, or PageError saying why it cannot be tracked here."""
    if not path:
        raise PageError("no video: upload one or pick the example")
    name = Path(path).name
    unreadable = PageError(f"{name} is not a video this page can read (mp4, mov, avi, webm, ...)")
    try:
        info = video_info(path)
    except (OSError, ValueError):
        raise unreadable from None
    if info.num_frames > limit:
        raise PageError(
            f"{name} has {info.num_frames} frames; this page takes at most {limit} "
            "(cut it, or start app.py with a larger --max_frames)"
        )
    long_side = max(info.height, info.width)
    scale = min(max(1.0, SHOWN_SIDES[0] / long_side), SHOWN_SIDES[1] / long_side)
    size = (round(info.width * scale), round(info.height * scale))
    resample = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    shown = []
    try:
        for frame in read_video(path, max_frames=info.num_frames):
            small = frame if scale == 1.0 else cv2.resize(frame, size, interpolation=resample)
            shown.append(cv2.imencode(".jpg", small[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    except (OSError, ValueError):
        raise unreadable from None
    if len(shown) < 2:
        raise PageError(f"{name} has {len(shown)} readable frame(s); tracking needs at least 2")
    fps = info.fps or 24.0
    return Clip(path, len(shown), info.height, info.width, fps, shown, scale, (size[1], size[0]), [])


def frame_with_points(clip: Clip, t: int) -> np.ndarray:
    """Frame t as shown, RGB, with the points clicked on it drawn in their tracks' colours, white-ringed."""
    t = min(max(int(t), 0), clip.num_frames - 1)
    frame = cv2.imdecode(np.frombuffer(clip.shown[t], np.uint8), cv2.IMREAD_COLOR)[..., ::-1].copy()
    if not clip.points:
        return frame
    rows = np.array(clip.points, dtype=np.float32)  # N,3
    colors = colors_by_position(rows[:, 1:], clip.height, clip.width).tolist()  # N,3
    radius = max(5, 2 * point_radius(*frame.shape[:2]))
    for (pt, x, y), color in zip(clip.points, colors):
        if pt == t:
            centre = (round((x + 0.5) * clip.scale - 0.5), round((y + 0.5) * clip.scale - 0.5))
            cv2.circle(frame, centre, radius + 2, (255, 255, 255), -1, cv2.LINE_AA)
            cv2.circle(frame, centre, radius, tuple(color), -1, cv2.LINE_AA)
    return frame


def add_point(clip: Clip | None, t: int, x_shown: float, y_shown: float) -> Clip:
    """`clip` with a query point at frame t where the shown frame was clicked, or PageError for a click
    outside the frame or with no video."""
    if clip is None:
        raise PageError("no video yet: upload one or pick the example, then click on its frame")
    h, w = clip.shown_size
    if not (0 <= x_shown < w and 0 <= y_shown < h):
        x, y = x_shown / clip.scale, y_shown / clip.scale
        raise PageError(
            f"the click at x={x:.0f}, y={y:.0f} lies outside the {clip.width}x{clip.height} frame: "
            "click on the picture"
        )
    # shown pixel centres to the video's, kept inside the frame where the picture is enlarged
    x = min(max((x_shown + 0.5) / clip.scale - 0.5, 0.0), clip.width - 1.0)
    y = min(max((y_shown + 0.5) / clip.scale - 0.5, 0.0), clip.height - 1.0)
    clip.points.append((int(t), float(x), float(y)))
    return clip


def query_rows(clip: Clip, grid_size: int, image_size: tuple[int, int], max_points: int) -> torch.Tensor:
    """N,3 t,x,y rows: the clicked points, else a grid_size^2 grid at frame 0; PageError when neither."""
    if clip.points:
        rows = torch.tensor(clip.points, dtype=torch.float32)
    elif grid_size >= 1:
        rows = grid_queries(int(grid_size), clip.height, clip.width, image_size)
    else:
        raise PageError("no points to track: click on the frame to add some, or choose a grid size above 0")
    if len(rows) > max_points:
        raise PageError(f"{len(rows)} points are more than this page's {max_points}: choose a smaller grid")
    return check_queries(rows, clip.num_frames, clip.height, clip.width)


def parse_size(text: str) -> tuple[int, int]:
    """'H,W' (each at least MIN_SIDE) from the settings box, or PageError naming it."""
    try:
        return check_size(tuple(int(part) for part in text.replace("x", ",").split(",")), least=MIN_SIDE)
    except ValueError as err:
        raise PageError(f"model size {text!r}: {err}; give H,W such as 160,280") from None


class Models:
    """The page's networks: the checkpoint's (when present) or a random initialisation, and one
    PipsTracker per setting, exported to onnxruntime once per setting where that is the runtime."""

    def __init__(self, cfg: AppConfig) -> None:
        self.cfg = cfg
        self.device = pick_device(cfg.device)
        self.checkpoint = Path(cfg.init_ckpt) if Path(cfg.init_ckpt).exists() else None
        self._models: dict[bool, torch.nn.Module] = {}
        if self.checkpoint is not None:  # a file that is not a checkpoint stops the app before it serves
            self._models[False] = build_model(self.checkpoint, self.device)
        self._trackers: OrderedDict[tuple, PipsTracker] = OrderedDict()
        self._lock = threading.Lock()

    def notice(self) -> str:
        if self.checkpoint is not None:
            return f"Model: `{self.checkpoint}` on {self.device.type}."
        return (
            f"No reference model at `{self.cfg.init_ckpt}` (`./get_reference_model.sh` downloads it): "
            "the page runs with **random weights**, for a try; their tracks mean nothing."
        )

    def model(self, random_weights: bool) -> torch.nn.Module:
        if random_weights not in self._models:
            if random_weights:
                torch.manual_seed(0)
            checkpoint = None if random_weights else self.checkpoint
            self._models[random_weights] = build_model(checkpoint, self.device)
        return self._models[random_weights]

    def tracker(
        self,
        random_weights: bool,
        S: int,
        iters: int,
        image_size: tuple[int, int],
        log: Callable[[str], None],
    ) -> PipsTracker:
        """The PipsTracker of these weights and setting; `log` hears of a first export."""
        if not random_weights and self.checkpoint is None:
            raise PageError(f"no checkpoint at {self.cfg.init_ckpt}: tick 'random weights' to try the page")
        key = (random_weights, S, iters, image_size)
        with self._lock:
            if key not in self._trackers:
                model = self.model(random_weights)
                if use_onnxruntime(self.cfg.runtime, self.device, log):
                    onnx = cached_export(model, S, image_size, iters, log)
                    tracker = PipsTracker.from_onnx(onnx, S=S, iters=iters, image_size=image_size)
                else:
                    tracker = PipsTracker(model, S=S, iters=iters, image_size=image_size)
                self._trackers[key] = tracker
                while len(self._trackers) > 4:
                    self._trackers.popitem(last=False)
            return self._trackers[key]


def track_clip(
    models: Models,
    clip: Clip,
    rows: torch.Tensor,
    random_weights: bool,
    S: int,
    iters: int,
    image_size: tuple[int, int],
    out_dir: Path,
    progress: Callable[[float, str], None],
) -> tuple[str, Path, list[Path]]:
    """Tracks `rows` through the clip and writes <name>_tracks.mp4/.npz/.csv into out_dir; the status line,
    the mp4 and the two track files. `progress(fraction, text)` hears how far it is."""
    progress(0.0, "preparing the model (the first run of a setting exports it to onnxruntime on a CPU)")
    tracker = models.tracker(random_weights, S, iters, image_size, lambda line: progress(0.0, line))
    total = (clip.num_frames - 1) * len(rows[:, 0].unique())
    done = 0

    def tracked(frames: int) -> None:
        nonlocal done
        done += frames
        progress(0.9 * done / total, f"tracking: {done}/{total} frames")

    began = time.perf_counter()
    result = tracker.predict(clip.path, queries=rows, progress=tracked)
    seconds = time.perf_counter() - began
    out_dir.mkdir(parents=True, exist_ok=True)
    name = Path(clip.path).stem
    files = [out_dir / f"{name}_tracks.npz", out_dir / f"{name}_tracks.csv"]
    save_npz(files[0], result, rows.numpy(), clip.fps)
    save_csv(files[1], result)
    progress(0.9, "drawing the tracks")
    video = out_dir / f"{name}_tracks.mp4"
    write_tracks_video(video, clip.path, result, rows.numpy(), (clip.height, clip.width), clip.fps, chunk=S)
    T = len(result.tracks)
    status = (
        f"Tracked {len(rows)} point(s) through {T} frames in {seconds:.1f} s ({T / seconds:.1f} frames/s) "
        f"at {image_size[0]}x{image_size[1]}, {iters} iteration(s), S={S}."
    )
    return status, video, files


def page_defaults(cfg: AppConfig, device: torch.device) -> tuple[int, int, tuple[int, int], int]:
    """The page's S, iters, model size and grid size: the flags', else the demo's for `device`."""
    setting = setting_for(device)
    size = cfg.image_size or setting.image_size
    return cfg.S or setting.S, cfg.iters or setting.iters, tuple(size), round(math.sqrt(setting.N))


def prepare(models: Models, cfg: AppConfig) -> None:
    """Builds the tracker of the page's default setting (exported to onnxruntime where that runs), so that
    the first run does not wait for it; a failure is said in one line and left to the run to report."""
    S, iters, size, _ = page_defaults(cfg, models.device)
    try:
        models.tracker(models.checkpoint is None, S, iters, size, print)
    except (OSError, ValueError, RuntimeError) as err:
        print(f"could not prepare the model: {one_line(err)}")


def build_page(cfg: AppConfig, models: Models, example: Path, work: Path) -> Any:
    """The gradio Blocks of the page."""
    import gradio as gr

    S, iters, size, grid_size = page_defaults(cfg, models.device)
    defaults = {"S": S, "iters": iters, "size": f"{size[0]},{size[1]}", "grid": grid_size}

    def said(err: Exception) -> str:
        return f"**Error:** {err}"

    def load(path: str | None):
        try:
            clip = open_clip(path, cfg.max_frames)
        except PageError as err:
            return None, gr.update(value=0, maximum=1), None, [], said(err)
        slider = gr.update(value=0, maximum=clip.num_frames - 1)
        message = f"{Path(clip.path).name}: {clip.num_frames} frames of {clip.width}x{clip.height}."
        return clip, slider, frame_with_points(clip, 0), [], message + " Click on the frame to add points."

    def show(clip: Clip | None, t: int):
        return None if clip is None else frame_with_points(clip, t)

    def table(clip: Clip | None) -> list[list[float]]:
        return [] if clip is None else [[t, round(x, 1), round(y, 1)] for t, x, y in clip.points]

    def click(clip: Clip | None, t: int, evt: gr.SelectData):
        try:
            x, y = evt.index
            clip = add_point(clip, t, x, y)
        except PageError as err:
            return clip, show(clip, t), table(clip), said(err)
        return clip, frame_with_points(clip, t), table(clip), f"{len(clip.points)} point(s)."

    def undo(clip: Clip | None, t: int):
        if clip is not None and clip.points:
            clip.points.pop()
        return clip, show(clip, t), table(clip)

    def clear(clip: Clip | None, t: int):
        if clip is not None:
            clip.points.clear()
        return clip, show(clip, t), table(clip)

    def run_page(clip, grid, random_weights, size_text, S, iters, progress=gr.Progress()):  # noqa: B008
        try:
            if clip is None:
                raise PageError("no video: upload one or pick the example")
            image_size = parse_size(size_text)
            S, iters, grid = int(S or 0), int(iters or 0), int(grid or 0)
            if S < 2 or iters < 1:
                raise PageError(f"frames per window must be at least 2 and iterations at least 1 (S={S})")
            rows = query_rows(clip, grid, image_size, cfg.max_points)
            out = Path(tempfile.mkdtemp(prefix="run_", dir=work))
            step = lambda fraction, text: progress(fraction, desc=text)  # noqa: E731
            status, video, files = track_clip(
                models, clip, rows, bool(random_weights), S, iters, image_size, out, step
            )
        except PageError as err:
            return said(err), None, None
        except (OSError, ValueError, RuntimeError) as err:
            return said(f"tracking failed: {' '.join(str(err).split())}"), None, None
        return status, str(video), [str(f) for f in files]

    with gr.Blocks(title="PIPs++ point tracking") as page:
        gr.Markdown("# PIPs++: track any point through a video")
        gr.Markdown(models.notice(), elem_id="model-notice")
        clip = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                video = gr.Video(label="video", sources=["upload"], elem_id="video-in")
                gr.Examples([[str(example)]], inputs=[video], label="example")
                grid = gr.Number(
                    defaults["grid"],
                    precision=0,
                    minimum=0,
                    label="grid size where no point is clicked (g x g points at frame 0; 0 = none)",
                    elem_id="grid",
                )
                with gr.Accordion("model settings", open=False):
                    random_weights = gr.Checkbox(
                        models.checkpoint is None, label="random weights (untrained, for a try)"
                    )
                    size_box = gr.Textbox(
                        defaults["size"], label=f"model size H,W (at least {MIN_SIDE} each)"
                    )
                    S_box = gr.Number(defaults["S"], precision=0, minimum=2, label="frames per window S")
                    iters_box = gr.Number(defaults["iters"], precision=0, minimum=1, label="iterations")
                run_button = gr.Button("track", variant="primary", elem_id="run")
                status = gr.Markdown("Upload a video or pick the example.", elem_id="status")
            with gr.Column(scale=2):
                frame_t = gr.Slider(0, 1, value=0, step=1, label="frame", elem_id="frame-slider")
                frame = gr.Image(
                    label="click to add a point at this frame",
                    interactive=False,
                    type="numpy",
                    elem_id="frame",
                )
                with gr.Row():
                    undo_button = gr.Button("undo", elem_id="undo")
                    clear_button = gr.Button("clear", elem_id="clear")
                points = gr.Dataframe(
                    headers=["frame", "x", "y"], label="points", interactive=False, elem_id="points"
                )
        with gr.Row():
            result = gr.Video(label="tracks", interactive=False, elem_id="result")
            downloads = gr.File(label="tracks: npz and csv", file_count="multiple", elem_id="downloads")

        video.change(load, [video], [clip, frame_t, frame, points, status])
        frame_t.change(show, [clip, frame_t], [frame])
        frame.select(click, [clip, frame_t], [clip, frame, points, status])
        undo_button.click(undo, [clip, frame_t], [clip, frame, points])
        clear_button.click(clear, [clip, frame_t], [clip, frame, points])
        inputs = [clip, grid, random_weights, size_box, S_box, iters_box]
        run_button.click(run_page, inputs, [status, result, downloads])
    return page


def check_port(host: str, port: int) -> None:
    """OSError naming the address when nothing can serve on it (say, another page holds the port)."""
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError as err:
            why = f"cannot serve on {host}:{port} ({err.strerror})"
            raise OSError(f"{why}: pass --port with a free one") from None


def main(cfg: AppConfig) -> None:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # a local page reports nothing anywhere
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise OSError("the web page needs gradio: pip install -r requirements.txt") from None
    check_port(cfg.host, cfg.port)
    models = Models(cfg)
    print(models.notice().replace("**", "").replace("`", ""))
    if models.device.type == "cpu":
        given = [f"--{name}" for name in ("S", "iters", "image_size") if getattr(cfg, name) is not None]
        print(cpu_setting_line(FULL_SETTING.flags().replace(" --N 1024", ""), given, points=False))
    threading.Thread(target=prepare, args=(models, cfg), daemon=True).start()
    example = make_example(cache_dir())
    work = Path(tempfile.mkdtemp(prefix="pips2_app_"))
    page = build_page(cfg, models, example, work)
    status = 0
    try:
        with StopRequest() as stop:
            page.queue().launch(
                server_name=cfg.host,
                server_port=cfg.port,
                share=cfg.share,
                allowed_paths=[str(work), str(example.parent)],
                max_file_size="500mb",
                quiet=True,
                prevent_thread_lock=True,
            )
            share = f" and {page.share_url}" if page.share_url else ""
            print(f"serving the page on {page.local_url}{share}; Ctrl-C stops it")
            while page.is_running and not stop.requested:
                time.sleep(0.2)
            status = stop.status if stop.requested else 0
        print("stopping the page")
        page.close()
    except OSError as err:
        sys.stderr.write(f"error: {one_line(err)}\n")
        status = ERROR_EXIT
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # the export, or a run, may still be inside torch or onnxruntime, whose threads abort a normal exit
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    run(main, AppConfig)
