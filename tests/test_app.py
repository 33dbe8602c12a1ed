"""The web page (app.py): its handlers on bad input, and the whole page driven in headless Chromium, where
the downloaded tracks are PipsTracker's for the clicked queries."""

import csv
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import app
from tracking.predictor import PipsTracker, build_model
from utils.video import write_video

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# as the app is started below: a tiny setting, PyTorch, no checkpoint (random weights)
SETTING = {"S": 8, "iters": 1, "image_size": (64, 96)}
LIMIT = 60  # --max_frames of the app under test


def noise_video(path: Path, T: int, H: int = 48, W: int = 64) -> Path:
    write_video(path, np.random.default_rng(T).integers(0, 256, (T, H, W, 3), np.uint8), fps=8)
    return path


def test_a_file_that_is_not_a_video_and_a_long_video_are_refused_in_one_line(tmp_path) -> None:
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    with pytest.raises(app.PageError, match=r"^notes\.mp4 is not a video this page can read"):
        app.open_clip(str(text), LIMIT)
    long = noise_video(tmp_path / "long.mp4", LIMIT + 1)
    with pytest.raises(
        app.PageError, match=f"long.mp4 has {LIMIT + 1} frames; this page takes at most {LIMIT}"
    ):
        app.open_clip(str(long), LIMIT)
    with pytest.raises(app.PageError, match="no video"):
        app.open_clip(None, LIMIT)


def test_clicks_map_to_the_videos_pixel_centres_and_outside_is_refused(tmp_path) -> None:
    clip = app.open_clip(str(noise_video(tmp_path / "small.mp4", 4)), LIMIT)  # 64x48 shown 10x larger
    assert clip.scale == 10 and clip.shown_size == (480, 640)
    assert app.frame_with_points(clip, 3).shape == (480, 640, 3)
    app.add_point(clip, 2, 5.0, 5.0)  # the middle of shown pixel (5, 5) lies in video pixel 0
    app.add_point(clip, 3, 634.5, 474.5)  # the middle of video pixel (63, 47): pixel centres map exactly
    app.add_point(clip, 1, 639.0, 0.0)  # the enlarged picture's corner stays inside the frame
    np.testing.assert_allclose(clip.points, [(2, 0.05, 0.05), (3, 63.0, 47.0), (1, 63.0, 0.0)], atol=1e-12)
    for x, y in [(640.0, 10.0), (-1.0, 10.0), (10.0, 480.0)]:
        with pytest.raises(app.PageError, match="lies outside the 64x48 frame"):
            app.add_point(clip, 0, x, y)
    assert len(clip.points) == 3
    with pytest.raises(app.PageError, match="no video yet"):
        app.add_point(None, 0, 1.0, 1.0)


def test_queries_are_the_clicks_else_the_grid_and_neither_is_refused(tmp_path) -> None:
    clip = app.open_clip(str(noise_video(tmp_path / "small.mp4", 4)), LIMIT)
    with pytest.raises(app.PageError, match="no points to track: click on the frame"):
        app.query_rows(clip, 0, (64, 96), 100)
    grid = app.query_rows(clip, 3, (64, 96), 100)
    assert grid.shape == (9, 3) and (grid[:, 0] == 0).all()
    with pytest.raises(app.PageError, match="9 points are more than this page's 8"):
        app.query_rows(clip, 3, (64, 96), 8)
    app.add_point(clip, 2, 104.5, 204.5)
    rows = app.query_rows(clip, 3, (64, 96), 100)
    assert rows.tolist() == [[2.0, 10.0, 20.0]]


def test_the_model_size_box_names_a_bad_value() -> None:
    assert app.parse_size("160, 280") == (160, 280) and app.parse_size("64x96") == (64, 96)
    for bad in ("160", "abc", "32,280", "0,0"):
        with pytest.raises(app.PageError, match=f"model size {bad!r}"):
            app.parse_size(bad)


def _missing() -> str:
    missing = [name for name in ("gradio", "playwright") if importlib.util.find_spec(name) is None]
    return ", ".join(missing + ([] if CHROMIUM else ["chromium (apt-get install chromium)"]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _status(page, text: str, timeout: float = 60) -> str:
    """The status line, once it contains `text`."""
    page.wait_for_function(
        "t => document.querySelector('#status').innerText.includes(t)", arg=text, timeout=timeout * 1000
    )
    return page.inner_text("#status")


@pytest.fixture
def served(tmp_path):
    """app.py on a free local port (tiny setting, random weights), and its URL."""
    port = _free_port()
    H, W = SETTING["image_size"]
    command = [sys.executable, str(REPO / "app.py"), "--port", str(port), "--runtime", "torch"]
    command += ["--S", str(SETTING["S"]), "--iters", str(SETTING["iters"]), "--image_size", f"{H},{W}"]
    command += ["--max_frames", str(LIMIT)]  # and no reference_model in the folder it runs in
    env = {**os.environ, "PIPS_CACHE": str(tmp_path / "cache"), "GRADIO_TEMP_DIR": str(tmp_path / "gradio")}
    log = open(tmp_path / "app.log", "w")
    proc = subprocess.Popen(command, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        while "serving the page on" not in (tmp_path / "app.log").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "app.log").read_text()
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.terminate()  # SIGTERM, as a scheduler stops a service
        status = proc.wait(timeout=30)
        log.close()
    assert status == 128 + 15 and "stopping the page" in (tmp_path / "app.log").read_text()
    assert "Traceback" not in (tmp_path / "app.log").read_text()


@pytest.mark.skipif(bool(_missing()), reason=f"the browser test needs {_missing()}")
def test_the_page_tracks_clicked_points_in_a_browser(served, tmp_path) -> None:
    from playwright.sync_api import sync_playwright

    video = app.make_example(tmp_path / "example")  # 48 frames, 270x480
    notes = tmp_path / "notes.mp4"
    notes.write_text("not a video")
    long = noise_video(tmp_path / "long.mp4", LIMIT + 1)
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"]
    args += ["--disable-background-networking", "--disable-component-update", "--disable-sync"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=args)
        page = browser.new_page(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
        page.goto(served)
        assert "random weights" in page.inner_text("#model-notice")
        upload = page.locator("#video-in input[type=file]")
        upload.set_input_files(str(notes))
        assert "notes.mp4 is not a video this page can read" in _status(page, "not a video")
        page.locator("#video-in button[aria-label='Clear']").click()
        upload.set_input_files(str(long))
        assert f"this page takes at most {LIMIT}" in _status(page, "at most")
        page.locator("#video-in button[aria-label='Clear']").click()
        upload.set_input_files(str(video))
        assert "48 frames of 480x270" in _status(page, "frames of")

        page.fill("#grid input", "0")
        page.click("#run")
        assert "no points to track" in _status(page, "no points")

        frame_box = page.locator("#frame-slider input[type=number]")
        frame_box.fill("30")
        frame_box.press("Enter")
        image = page.locator("#frame img")
        page.wait_for_timeout(500)  # the frame shown follows the slider
        box = image.bounding_box()
        clicks = [(0.25, 0.5), (0.7, 0.3)]
        for k, (fx, fy) in enumerate(clicks, 1):
            image.click(position={"x": box["width"] * fx, "y": box["height"] * fy})
            _status(page, f"{k} point(s)", timeout=20)
        page.click("#run")
        assert "Tracked 2 point(s) through 48 frames" in _status(page, "Tracked", timeout=120)
        page.wait_for_selector("#result video[src]")
        for close in page.locator("[data-testid=toast-close]").all():  # the browser's own "not playable"
            close.click()
        page.eval_on_selector("#result video", "v => { v.currentTime = 30 / 12; }")  # the clicked frame
        page.wait_for_timeout(1000)
        page.screenshot(path=str(tmp_path / "app_result.png"), full_page=True)
        saved = {}
        for suffix in ("npz", "csv"):
            with page.expect_download() as download:
                page.click(f"#downloads a[download$='.{suffix}']")
            saved[suffix] = tmp_path / download.value.suggested_filename
            download.value.save_as(saved[suffix])
        browser.close()

    tracks = np.load(saved["npz"])
    queries = tracks["queries"]
    assert queries[:, 0].tolist() == [30, 30]
    # each click, in the 480x270 video's pixels, where the picture was clicked (within a shown pixel)
    np.testing.assert_allclose(queries[:, 1:], [[fx * 480, fy * 270] for fx, fy in clicks], atol=1.0)
    torch.manual_seed(0)  # the page's random weights
    tracker = PipsTracker(build_model(None, "cpu"), **SETTING)
    expected = tracker(str(video), queries=queries)
    np.testing.assert_allclose(tracks["tracks"], expected, atol=1e-5, rtol=0)
    with open(saved["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 48 * 2 and rows[0]["visible"] == "" and rows[0]["confidence"] == ""
    from_csv = np.array([[float(r["x"]), float(r["y"])] for r in rows], np.float32).reshape(48, 2, 2)
    np.testing.assert_array_equal(from_csv, tracks["tracks"])


def test_a_port_in_use_is_one_line_naming_it(tmp_path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc = subprocess.run(
            [
                sys.executable,
                str(REPO / "app.py"),
                "--port",
                str(port),
                "--init_ckpt",
                str(tmp_path / "none"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert (
        proc.stderr.splitlines()[-1]
        == f"error: cannot serve on 127.0.0.1:{port} (Address already in use): pass --port with a free one"
    )


def test_a_file_that_is_not_a_checkpoint_stops_the_app_before_it_serves(tmp_path) -> None:
    (tmp_path / "model.pth").write_bytes(b"junk")
    proc = subprocess.run(
        [sys.executable, str(REPO / "app.py"), "--port", str(_free_port()), "--init_ckpt", "model.pth"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "serving" not in proc.stdout
    assert (
        proc.stderr.splitlines()[-1]
        == "error: model.pth is not a checkpoint (not a file written by torch.save)"
    )
