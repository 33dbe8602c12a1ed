import os
import shutil
import threading
from collections.abc import Iterator

import pytest
import torch
from tqdm import tqdm

# tqdm's default write lock includes a semaphore shared by forked processes: one left held by a process killed
# at its time limit (mutation testing runs the tests in forked workers) would block every other worker
tqdm.set_lock(threading.RLock())

if torch.distributed.is_available():
    # torch.testing.assert_close imports this on its first call (about 2 s, sympy included): importing it with
    # the tests keeps that cost out of every test process that mutation testing forks
    import torch.distributed.tensor  # noqa: F401


@pytest.fixture(scope="session", autouse=True)
def remove_temporary_files_of_mutants(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A mutation run ends thousands of test sessions in processes that skip pytest's exit handlers, so their
    temporary directories stay locked and pytest never removes them (gigabytes: some tests save checkpoints
    of the full model)."""
    yield
    if "MUTANT_UNDER_TEST" in os.environ:
        shutil.rmtree(tmp_path_factory.getbasetemp(), ignore_errors=True)
