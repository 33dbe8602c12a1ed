"""CPU-sized defaults: without a GPU the demo and PipsTracker take the CPU setting for what they are not
given, and say so in one line that names the full setting; whatever is given wins."""

import logging

import pytest
import torch

import demo
import tracking.settings
from nets.pips2 import Pips
from tracking.predictor import PipsTracker
from tracking.settings import CPU_SETTING, FULL_SETTING, fill_setting, frame_seconds
from utils.config import read_command_line


def resolve_demo(*argv: str) -> tuple[demo.DemoConfig, list[str]]:
    return demo.resolve_config(demo.DemoConfig, read_command_line(demo.DemoConfig, argv, "demo.py"))


def test_demo_on_a_cpu_takes_the_cpu_setting_and_says_so() -> None:
    config, notes = resolve_demo("--filename", "v.mp4", "--device", "cpu")
    chosen = (config.image_size, config.N, config.iters, config.S)
    assert chosen == (CPU_SETTING.image_size, CPU_SETTING.N, CPU_SETTING.iters, CPU_SETTING.S)
    assert notes == [tracking.settings.cpu_setting_line(FULL_SETTING.flags())]
    assert "--image_size 512,896 --N 1024 --iters 16 --S 64" in notes[0] and "CPU setting" in notes[0]
    config, notes = resolve_demo("--device", "cpu", "--iters", "7", "--image_size", "128,224")
    assert (config.iters, config.image_size, config.N, config.S) == (
        7,
        (128, 224),
        CPU_SETTING.N,
        CPU_SETTING.S,
    )
    assert "(--image_size, --iters as given)" in notes[0]
    flags = ("--N", "9", "--S", "5", "--iters", "2", "--image_size", "64,64")
    config, notes = resolve_demo("--device", "cpu", *flags)
    assert (config.N, config.S, config.iters, config.image_size) == (9, 5, 2, (64, 64)) and notes == []


def test_demo_on_a_gpu_takes_the_full_setting(monkeypatch) -> None:
    monkeypatch.setattr(demo, "pick_device", lambda name: torch.device("cuda"))
    config, notes = resolve_demo("--S", "12")
    assert (config.image_size, config.N, config.iters, config.S) == (FULL_SETTING.image_size, 1024, 16, 12)
    assert notes == []


def test_tracker_without_settings_on_a_cpu_logs_its_choice(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="tracking.settings"):
        tracker = PipsTracker(Pips(), iters=3)
    assert (tracker.S, tracker.iters, tracker.image_size) == (CPU_SETTING.S, 3, CPU_SETTING.image_size)
    [line] = caplog.messages
    assert "no GPU found" in line and "(iters as given)" in line and FULL_SETTING.arguments() in line
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tracking.settings"):
        assert fill_setting(torch.device("cpu"), 4, 2, (64, 64)) == (4, 2, (64, 64))
        assert fill_setting(torch.device("meta"), None, None, None) == (64, 16, (512, 896))
    assert caplog.messages == []


def test_expected_time_grows_with_pixels_points_and_iterations(monkeypatch) -> None:
    """frame_seconds adds one frame's encoding to the sampling's and the delta block's times per point and
    frame, times the points and iterations; a fake clock gives each call a known length."""
    model = Pips()
    calls = []

    def timed(fn, *args) -> float:
        name = getattr(fn, "func", fn).__name__
        calls.append(name)
        return {"encode": 4.0, "_sample_step": 2 * 64 * 0.002, "predict_delta": 32 * 64 * 0.001}[name]

    monkeypatch.setattr(tracking.settings, "_seconds", timed)
    assert frame_seconds(model, (64, 96), points=10, iters=3, S=32) == pytest.approx(2.0 + 0.003 * 30)
    assert calls == ["encode", "encode", "_sample_step", "predict_delta"]
    line = tracking.settings.expected_time_line(model, (512, 896), iters=16, S=32, points=256)
    assert "about 14.3 s per video frame at 512x896, 16 iterations and 256 points (4.0 h per 1000" in line
