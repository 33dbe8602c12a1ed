"""Speed, memory and accuracy of the model's paths: one mode per question, each with its own flags.

    python benchmark.py [time] [flags]        # time, peak memory and FLOPs of the exact and the fast path
    python benchmark.py agree --ckpt DIR      # how far the fast path's tracks are from the exact path's
    python benchmark.py videos --lengths 250,1000,4000   # PipsTracker through long generated videos

The mode is the first argument (`time` when there is none); `python benchmark.py MODE --help` lists its
flags. Each mode prints a table and writes its rows to a JSON file (--out), rewritten as each row ends:
Ctrl-C or SIGTERM stops the run with one line saying how many rows the file kept (exit status 130 for
Ctrl-C). The modes live in bench/, whose docstring says how to add a path or a mode.
"""

import difflib
import sys
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NamedTuple

from bench import agreement, paths, timing, videos
from bench.paths import PathFn
from utils.config import USAGE_EXIT, run

PATHS: dict[str, PathFn] = {"exact": paths.exact, "fast": paths.fast}  # what --paths of the time mode names


class Mode(NamedTuple):
    main: Callable[[Any], None]
    config: type
    doc: str


MODES = {
    "time": Mode(partial(timing.main, paths=PATHS), timing.TimingConfig, timing.__doc__),
    "agree": Mode(agreement.main, agreement.AgreeConfig, agreement.__doc__),
    "videos": Mode(videos.main, videos.VideosConfig, videos.__doc__),
}
DEFAULT_MODE = "time"


def dispatch(argv: Sequence[str]) -> None:
    """Run the mode that `argv` names first (the default mode where it starts with a flag) with the rest."""
    named = bool(argv) and not argv[0].startswith("-")
    mode = argv[0] if named else DEFAULT_MODE
    if mode not in MODES:
        close = difflib.get_close_matches(mode, list(MODES), n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        sys.stderr.write(f"error: unknown mode {mode!r}{hint} (the modes: {', '.join(MODES)})\n")
        sys.exit(USAGE_EXIT)
    chosen = MODES[mode]
    prog = f"benchmark.py {mode}" if named else "benchmark.py"
    doc = f"{__doc__.strip()}\n\n{chosen.doc.strip()}" if mode == DEFAULT_MODE else chosen.doc.strip()
    run(chosen.main, chosen.config, argv=list(argv[1:] if named else argv), prog=prog, description=doc)


if __name__ == "__main__":
    dispatch(sys.argv[1:])
