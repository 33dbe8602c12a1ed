"""Command-line helpers for the fire scripts."""

import inspect
import re
from collections.abc import Callable

_KNOB = re.compile(r"^\s+(\w+)\s*:[^#]*?#\s*(.+?)\s*$")
_END_OF_SIGNATURE = re.compile(r"^\)\s*(->.*)?:\s*$")


def explain_flags(fn: Callable) -> Callable:
    """Append an Args section built from the `# comment` after each keyword parameter of `fn`, so that
    `script.py --help` (fire) explains every flag; the comments stay the one place knobs are described."""
    knobs = []
    for line in inspect.getsource(fn).splitlines()[1:]:
        if _END_OF_SIGNATURE.match(line):
            break
        if m := _KNOB.match(line):
            knobs.append(m.groups())
    if knobs:
        args = "\n".join(f"    {name}: {comment}" for name, comment in knobs)
        fn.__doc__ = f"{inspect.cleandoc(fn.__doc__ or '')}\n\nArgs:\n{args}\n".lstrip()
    return fn
