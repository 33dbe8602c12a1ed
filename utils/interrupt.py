"""Stopping a long job on Ctrl-C (SIGINT) or a scheduler's SIGTERM at a point where its work can be saved."""

import os
import signal
import sys
import threading
from types import FrameType, TracebackType

import torch
import torch.distributed as tdist

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def exit_code(signum: int) -> int:
    """The exit status a shell reports for a process ended by signal `signum` (130 for Ctrl-C)."""
    return 128 + signum


def ignore_stop_signals(_worker_id: int | None = None) -> None:
    """For helper processes (DataLoader workers): the main process decides when to stop and ends them."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


class StopRequest:
    """Inside `with StopRequest(notice) as stop:` the first SIGINT or SIGTERM only records itself (and
    prints `notice`), so the job stops at its next safe point. A second one ends the process at once with
    status 128 + signal, leaving every file that is written atomically as it was; with quit_at_once=False it
    meets the handlers from before the block instead (Ctrl-C raises KeyboardInterrupt, so files close).
    Outside the main thread, where no signal arrives, the block changes nothing."""

    def __init__(self, notice: str | None = None, quit_at_once: bool = True) -> None:
        self.notice, self.quit_at_once = notice, quit_at_once
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._record)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _record(self, signum: int, _frame: FrameType | None) -> None:
        if self.signum is not None:
            os.write(2, b"interrupted again: quitting now; files saved before are kept\n")
            os._exit(exit_code(signum))
        self.signum = signum
        if not self.quit_at_once:
            self._restore()
        if self.notice:
            sys.stderr.write(self.notice + "\n")
            sys.stderr.flush()

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def agreed(self, device: torch.device) -> bool:
        """Whether any process of the job was asked to stop; every process gets the same answer, so all
        stop after the same step. A collective call: every process must make it at the same point."""
        if not (tdist.is_available() and tdist.is_initialized()) or tdist.get_world_size() == 1:
            return self.requested
        flag = torch.tensor([float(self.requested)], device=device)
        tdist.all_reduce(flag, op=tdist.ReduceOp.MAX)
        return bool(flag.item() > 0)

    @property
    def status(self) -> int:
        """Exit status once stopped: the signal's, or SIGTERM's where another process was signalled."""
        return exit_code(self.signum or signal.SIGTERM)
