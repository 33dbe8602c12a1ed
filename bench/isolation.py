"""A measurement in a process of its own, killed once its resident memory passes a cap.

So a row that needs more memory than the machine has becomes an "out of memory" row instead of exhausting
the machine. The child is spawned (a clean interpreter: no forked threads or allocator state) with SIGINT
ignored, so Ctrl-C at the terminal stops only the parent, which kills the child on its way out.
"""

import contextlib
import multiprocessing
import signal
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from typing import Any

from bench.measure import is_out_of_memory, proc_status_kib

Note = Callable[[dict], None]


def _child(conn: Connection, measure: Callable[..., None], args: tuple) -> None:
    """Entry of the child: run the measurement, which sends what it finds as it goes."""
    try:
        measure(*args, note=conn.send)
    except (MemoryError, RuntimeError) as error:
        if not is_out_of_memory(error):
            raise
        conn.send({"error": "out of memory"})
    conn.close()


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored while a child starts: a new interpreter keeps an ignored SIGINT ignored (Python
    installs its KeyboardInterrupt handler only where SIGINT has its default action). A Ctrl-C in the few
    milliseconds of the start is lost."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def run_capped(
    measure: Callable[..., None], args: tuple, cap_gib: float, name: str, poll_s: float = 0.02
) -> dict[str, Any]:
    """Run `measure(*args, note=send)` in a fresh process, killed once its resident memory passes `cap_gib`.

    Args:
        measure: a module-level function that calls `note` with dicts of what it has found.
        args: the positional arguments of `measure`.
        cap_gib: the cap on the child's resident memory, and on a peak_gib it reports.
        name: names the measurement in the RuntimeError raised when the child fails otherwise.
        poll_s: seconds between two looks at the child's resident memory.

    Returns:
        The dicts it sent, merged, with "error": "out of memory" where the cap was passed and
        "error": "killed (signal k)" where something else killed it.
    """
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(send, measure, args), daemon=True)
    with _sigint_ignored():
        process.start()
    send.close()
    found: dict[str, Any] = {}
    try:
        while True:
            if receive.poll(poll_s):
                try:
                    found |= receive.recv()
                except EOFError:  # it has sent everything and exited, or died
                    break
            elif (proc_status_kib("VmRSS", process.pid) or 0) > cap_gib * 2**20:
                return found | {"error": "out of memory"}
        process.join()
    finally:
        if process.is_alive():  # stopped before its end: over the cap, Ctrl-C or SIGTERM
            process.kill()
        process.join()
        receive.close()
    if process.exitcode and process.exitcode < 0:  # e.g. the kernel's OOM killer
        return found | {"error": f"killed (signal {-process.exitcode})"}
    if process.exitcode:
        raise RuntimeError(f"{name} failed with exit code {process.exitcode}")
    if (found.get("peak_gib") or 0.0) > cap_gib:
        return found | {"error": "out of memory"}
    return found
