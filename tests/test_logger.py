import math
import struct
from pathlib import Path

import numpy as np
from tensorboardX.proto.event_pb2 import Event

from utils.logger import Logger, RunningMeans


def read_tags(event_file: Path) -> set[str]:
    """Tags in a TFRecord event file (length u64, crc u32, payload, crc u32 per record)."""
    data, tags, pos = event_file.read_bytes(), set(), 0
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos : pos + 8])
        event = Event.FromString(data[pos + 12 : pos + 12 + length])
        tags |= {v.tag for v in event.summary.value}
        pos += 12 + length + 4
    return tags


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
    log.gif("tracks", np.zeros((4, 8, 8, 3), np.uint8), 3, fps=4)
    log.close()
    (event_file,) = tmp_path.glob("events.out.tfevents.*")
    assert read_tags(event_file) == {"train/loss", "tracks"}


def test_disabled_logger_writes_nothing(tmp_path) -> None:
    log = Logger(tmp_path / "off", enabled=False)
    log.scalars(0, {"x": 1.0})
    log.close()
    assert not (tmp_path / "off").exists()
