import threading

import torch
from tqdm import tqdm

# tqdm's default write lock includes a semaphore shared by forked processes: one left held by a process killed
# at its time limit (mutation testing runs the tests in forked workers) would block every other worker
tqdm.set_lock(threading.RLock())

if torch.distributed.is_available():
    # torch.testing.assert_close imports this on its first call (about 2 s, sympy included): importing it with
    # the tests keeps that cost out of every test process that mutation testing forks
    import torch.distributed.tensor  # noqa: F401
