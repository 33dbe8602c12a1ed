"""The benchmark's modes and what they share; benchmark.py (the script) dispatches to them.

    config.py     what every mode's config has (device, seed, out) and the fast path's precision
    measure.py    clocks, peak memory (CUDA allocator, or peak RSS on Linux) and FLOP counts
    isolation.py  a measurement in a child process, killed once its resident memory passes a cap
    report.py     the run's JSON, rewritten atomically as each row ends; Ctrl-C and SIGTERM keep the rows
    workloads.py  what the time mode times (the official H100 configs, small CPU ones) and its inputs
    paths.py      the paths of the time mode's rows: exact (float32) and fast (autocast, fused kernels)
    timing.py     the time mode: each workload on each path; time, peak memory, FLOPs, official figures
    agreement.py  the agree mode: the fast path's tracks against the exact path's, with trained weights
    videos.py     the videos mode: PipsTracker through long generated videos
    cpu_backends.py  the CPU runtimes side by side (eager, torch.compile, onnxruntime); runs alone too
    online.py     online against offline tracking: frames/s, latency, memory over a long stream; runs alone

A new kind of row in the time table (a CPU backend: torch.compile, onnxruntime; online tracking) is one
function `(workload, inputs, options) -> Step` (see paths.py), in paths.py or a module of its own, and one
line in benchmark.py's PATHS; `--paths` then names it, and its rows get the timing, peak memory, FLOPs,
CPU isolation of training rows, table and JSON of every other path. A new mode is a module with a config
(a frozen BenchConfig subclass) and `main(cfg)` that passes a generator of its rows to report.collect,
and one line in benchmark.py's MODES.
"""
