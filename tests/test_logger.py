import math
import struct
from pathlib import Path

import imageio.v3
import numpy as np
import pytest
from tensorboardX.proto.event_pb2 import Event

from utils.logger import Logger, Pace, RunningMeans


def read_values(event_file: Path) -> dict:
    """Summary values by tag in a TFRecord event file (length u64, crc u32, payload, crc u32 per record)."""
    data, values, pos = event_file.read_bytes(), {}, 0
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos : pos + 8])
        event = Event.FromString(data[pos + 12 : pos + 12 + length])
        values.update({v.tag: v for v in event.summary.value})
        pos += 12 + length + 4
    return values


def test_running_means_window_and_nan() -> None:
    pools = RunningMeans(window=2)
    pools.update({"a": 1.0, "b": float("nan")})
    pools.update({"a": 2.0})
    pools.update({"a": 4.0})
    assert pools.mean("a") == 3.0
    assert math.isnan(pools.mean("b")) and math.isnan(pools.mean("missing"))


def test_logger_writes_scalars_and_gif(tmp_path) -> None:
    log = Logger(tmp_path)
    log.scalars(3, {"loss": 0.5, "bad": float("inf")}, prefix="train/")
    frames = np.zeros((4, 8, 10, 3), np.uint8)
    frames[:, :, :, 0] = np.arange(4)[:, None, None] * 60
    log.gif("tracks", frames, 3, fps=4)
    log.close()
    (event_file,) = tmp_path.glob("events.out.tfevents.*")
    values = read_values(event_file)
    assert set(values) == {"train/loss", "tracks"}
    assert values["train/loss"].simple_value == 0.5
    gif = values["tracks"].image.encoded_image_string
    decoded = imageio.v3.imread(gif, index=None)
    assert gif[:3] == b"GIF" and decoded.shape[:3] == (4, 8, 10)
    assert abs(int(decoded[3, 0, 0, 0]) - 180) <= 2


def test_disabled_logger_writes_nothing(tmp_path) -> None:
    log = Logger(tmp_path / "off", enabled=False)
    log.scalars(0, {"x": 1.0})
    log.close()
    assert not (tmp_path / "off").exists()


def test_pace_counts_recent_steps_and_tells_the_time_left(monkeypatch) -> None:
    # step 1 ends at t = 130 after a slow start (warm-up, validation); later steps take 2 s, then one 10 s
    clock = iter([130.0, 132.0, 134.0, 136.0, 146.0])
    monkeypatch.setattr("utils.logger.time.perf_counter", lambda: next(clock))
    pace = Pace(window=2)
    assert pace.steps_per_s() == 0.0 and pace.eta(10) == "?"
    pace.tick()  # 130: step 1 done; its slow start does not count
    assert pace.eta(10) == "?"
    pace.tick()  # 132
    assert pace.steps_per_s() == 0.5 and pace.eta(7200) == "4:00:00"
    pace.tick()  # 134
    pace.tick()  # 136: the window holds 132, 134, 136
    assert pace.steps_per_s() == 0.5
    pace.tick()  # 146: 134, 136, 146
    assert pace.steps_per_s() == pytest.approx(1 / 6) and pace.eta(95) == "0:09:30"
