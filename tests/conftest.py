import threading

from tqdm import tqdm

# tqdm's default write lock includes a semaphore shared by forked processes: one left held by a process killed
# at its time limit (mutation testing runs the tests in forked workers) would block every other worker
tqdm.set_lock(threading.RLock())
