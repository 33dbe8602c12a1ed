"""The JSON file of a benchmark run, kept through Ctrl-C, and the cells of its tables.

A run's JSON is {"env": {...}, "rows": [...], "complete": false until the last row ended}. It is written
when the run starts and rewritten after each row (a temporary file moved over it), so a stopped run leaves
every row that ended and never a half-written file. Ctrl-C (SIGINT) or SIGTERM ends the run with one line,
`interrupted; 3 rows kept in benchmark.json`, and the exit status 128 + the signal (130 for Ctrl-C).
"""

import json
import os
import signal
import sys
from collections.abc import Generator
from pathlib import Path
from types import FrameType

STOPPED = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt, so that both stop a run the same way."""


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise Terminated


class Report:
    """The rows of a run and the environment they were measured in, mirrored in a JSON file."""

    def __init__(self, path: str | Path, env: dict) -> None:
        self.path, self.env = Path(path), env
        self.rows: list[dict] = []
        self.kept = 0  # rows in the file

    def write(self, complete: bool = False) -> None:
        """Replace the JSON file by the environment and the rows as they are now."""
        text = json.dumps({"env": self.env, "rows": self.rows, "complete": complete}, indent=2)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            tmp.write_text(text)
            os.replace(tmp, self.path)
            self.kept = len(self.rows)
        finally:
            tmp.unlink(missing_ok=True)


def collect(rows: Generator[dict, None, None], report: Report) -> list[dict]:
    """Every row of `rows` added to `report` as it ends, the JSON rewritten each time. Ctrl-C or SIGTERM
    stops the run here with one line (see the module docstring); returns the rows of a finished run."""
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        report.write()
        for row in rows:
            report.rows.append(row)
            report.write()
    except KeyboardInterrupt as stop:
        rows.close()
        signum = signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT
        plural = "" if report.kept == 1 else "s"
        sys.stdout.flush()
        sys.stderr.write(f"{STOPPED[signum]}; {report.kept} row{plural} kept in {report.path}\n")
        sys.exit(128 + signum)
    finally:
        signal.signal(signal.SIGTERM, previous)
    report.write(complete=True)
    return report.rows


def cell(value: float | None, spec: str) -> str:
    """A table cell: `value` formatted, or '-' where there is none."""
    return "-" if value is None else format(value, spec)
