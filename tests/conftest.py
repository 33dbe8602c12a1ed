import json
import math
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

# torch imports these on first use (seconds, sympy included): torch._dynamo when an optimizer is made,
# torch.distributed.tensor on the first torch.testing.assert_close. Importing them with the tests keeps that
# cost out of every test process that mutation testing forks.
import torch._dynamo  # noqa: F401
from tqdm import tqdm

# tqdm's default write lock includes a semaphore shared by forked processes: one left held by a process killed
# at its time limit (mutation testing runs the tests in forked workers) would block every other worker
tqdm.set_lock(threading.RLock())

if torch.distributed.is_available():
    import torch.distributed.tensor  # noqa: F401


# written by a mutation run beside its copy of the tests: how long each test took in the run's clean pass
MUTATION_STATS = Path(__file__).resolve().parent.parent / "mutmut-stats.json"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """In a mutation run, each mutant's tests run fastest first: the run stops at the first failure, so a
    mutant that a quick test catches never waits for a slow one."""
    if "MUTANT_UNDER_TEST" not in os.environ:
        return
    try:
        durations = json.loads(MUTATION_STATS.read_text())["duration_by_test"]
    except (OSError, ValueError, KeyError, TypeError):  # no timings (yet): the order stays as collected
        return
    items.sort(key=lambda item: durations.get(item.nodeid, math.inf))


@pytest.fixture(scope="session", autouse=True)
def remove_temporary_files_of_mutants(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A mutation run ends thousands of test sessions in processes that skip pytest's exit handlers, so their
    temporary directories stay locked and pytest never removes them (gigabytes: some tests save checkpoints
    of the full model)."""
    yield
    if "MUTANT_UNDER_TEST" in os.environ:
        shutil.rmtree(tmp_path_factory.getbasetemp(), ignore_errors=True)
