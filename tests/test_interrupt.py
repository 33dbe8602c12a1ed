"""Training stopped by SIGINT or SIGTERM saves the step it stopped at and resumes exactly."""

import contextlib
import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import train
from utils import checkpoint
from utils.config import read_command_line
from utils.interrupt import StopRequest, exit_code

REPO = Path(__file__).parent.parent
# 8 steps, validated after steps 1, 3 and 6; the step-based saves (every 1000) never come
SMALL = ["--B", "1", "--S", "4", "--N", "8", "--crop_size", "64,64", "--iters", "1", "--num_workers", "0"]
RUN = [*SMALL, "--val_freq", "3", "--val_clips", "2", "--log_freq", "4", "--save_freq", "1000"]
RUN += ["--max_steps", "8", "--run_name", "r"]
STOPPED = re.compile(r"interrupted at step (\d+); saved (\S+); go on with: python train.py --resume")


def script(root: Path, *args: str) -> list[str]:
    dirs = ["--log_dir", str(root / "logs"), "--ckpt_dir", str(root / "ckpt")]
    return [sys.executable, "train.py", *RUN, *dirs, *args]


def environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def finish(cmd: list[str]) -> str:
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=environment())
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def signal_at(cmd: list[str], line: str, signum: int) -> tuple[int, str, str]:
    """Runs `cmd`, sends `signum` once a stdout line contains `line`; its exit status, stdout and stderr."""
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment()
    )
    seen = []
    for text in proc.stdout:
        seen.append(text)
        if line in text:
            proc.send_signal(signum)
            break
    out, err = proc.communicate(timeout=300)
    return proc.returncode, "".join(seen) + out, err


def losses(out: str) -> dict[int, str]:
    """Step -> its loss as printed, and validation step -> its line's figures."""
    found = {}
    for text in out.splitlines():
        if m := re.search(r"; step (\d+)/\d+;.*?; (loss [\d.]+);", text):
            found[int(m[1])] = m[2]
        elif m := re.search(r"; validation at step (\d+): (.*)", text):
            found[-int(m[1])] = m[2]
    return found


def final_weights(root: Path) -> dict[str, torch.Tensor]:
    path = root / "ckpt" / "r" / "model-000000008.pth"
    return torch.load(path, weights_only=True)["model_state_dict"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("straight")
    return root, finish(script(root))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_the_step_it_stopped_at_and_the_resume_is_exact(straight, tmp_path, signum) -> None:
    root, straight_out = straight
    status, out, err = signal_at(script(tmp_path), "step 000003/8", signum)
    assert status == exit_code(signum), out[-2000:] + err[-2000:]
    assert "Traceback" not in err and "stopping: finishing this step" in err
    stop = STOPPED.search(out)
    assert stop is not None, out[-2000:]
    step = int(stop[1])
    assert 3 <= step < 8 and Path(stop[2]).name == f"model-{step:09d}.pth"
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path / "ckpt" / "r")] == [Path(stop[2]).name]
    assert checkpoint.read(stop[2])["config"]["max_steps"] == 8
    events = list((tmp_path / "logs" / "r").glob("events.*"))
    assert events and events[0].stat().st_size > 100  # flushed

    resumed = finish(script(tmp_path, "--resume"))
    assert f"resuming at step {step}" in resumed
    expected = {k: v for k, v in losses(straight_out).items() if abs(k) > step}
    assert losses(resumed) == expected and len(expected) >= 8 - step
    for name, value in final_weights(root).items():
        assert torch.equal(value, final_weights(tmp_path)[name]), name


def torchrun(root: Path, *args: str) -> list[str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533"]
    return [*launcher, *script(root, "--device", "cpu", *args)[1:]]


def test_sigterm_to_torchrun_stops_both_processes_at_one_step_with_one_checkpoint(tmp_path) -> None:
    straight = finish(torchrun(tmp_path / "straight"))
    assert straight.count("step 000008/8") == 1 and "2 process(es)" in straight  # rank 0 alone logs
    assert [p.name for p in (tmp_path / "straight" / "ckpt" / "r").iterdir()] == ["model-000000008.pth"]

    status, out, err = signal_at(torchrun(tmp_path / "stopped"), "step 000003/8", signal.SIGTERM)
    assert status != 0 and out.count("interrupted at step") == 1, out[-2000:] + err[-3000:]
    step = int(STOPPED.search(out)[1])
    assert [p.name for p in (tmp_path / "stopped" / "ckpt" / "r").iterdir()] == [f"model-{step:09d}.pth"]
    resumed = finish(torchrun(tmp_path / "stopped", "--resume"))
    assert losses(resumed) == {k: v for k, v in losses(straight).items() if abs(k) > step}
    a, b = final_weights(tmp_path / "straight"), final_weights(tmp_path / "stopped")
    assert all(torch.equal(a[k], b[k]) for k in a)


def resolved(root: Path, *args: str) -> train.TrainConfig:
    argv = [*RUN, "--log_dir", str(root / "logs"), "--ckpt_dir", str(root / "ckpt"), *args]
    config, _ = train.resolve_config(
        train.TrainConfig, read_command_line(train.TrainConfig, argv, "train.py")
    )
    return config


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the scripts run above, and steady on a busy machine
    yield
    torch.set_num_threads(threads)


ACCUMULATING = ("--grad_acc", "2")


@pytest.fixture(scope="module")
def straight_in_process(tmp_path_factory) -> tuple[Path, str]:
    root, threads = tmp_path_factory.mktemp("straight_in_process"), torch.get_num_threads()
    torch.set_num_threads(1)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            train.main(resolved(root, *ACCUMULATING))
    finally:
        torch.set_num_threads(threads)
    return root, out.getvalue()


@pytest.mark.parametrize("where", ["validation", "accumulation"])
def test_a_signal_during_validation_or_between_micro_batches_finishes_the_step(
    straight_in_process, one_thread, tmp_path, monkeypatch, capsys, where
) -> None:
    """A real SIGINT to this process while it validates after step 6, or while it fetches the second
    micro-batch of step 5: the step completes, is saved, and the resumed run ends as a straight one."""
    root, straight = straight_in_process
    real_validate, real_batches = train.validate, train.batches

    def validate(net, batch, cfg, logger, step, report):
        if step == 6:
            os.kill(os.getpid(), signal.SIGINT)
        return real_validate(net, batch, cfg, logger, step, report)

    def batches(dataset, B, num_workers, info, seed, start=0):
        for k, batch in enumerate(real_batches(dataset, B, num_workers, info, seed, start), start):
            if k == 9 and seed == 0:  # step 5's second micro-batch
                os.kill(os.getpid(), signal.SIGINT)
            yield batch

    fakes = {"validation": ("validate", validate), "accumulation": ("batches", batches)}
    monkeypatch.setattr(train, *fakes[where])
    with pytest.raises(SystemExit) as stopped:
        train.main(resolved(tmp_path / "stopped", *ACCUMULATING))
    assert stopped.value.code == exit_code(signal.SIGINT)
    step = 6 if where == "validation" else 5
    assert f"interrupted at step {step}; saved" in capsys.readouterr().out
    monkeypatch.undo()
    train.main(resolved(tmp_path / "stopped", *ACCUMULATING, "--resume"))
    resumed = capsys.readouterr().out
    assert losses(resumed) == {k: v for k, v in losses(straight).items() if abs(k) > step}
    a = checkpoint.read(root / "ckpt" / "r")["model_state_dict"]
    b = checkpoint.read(tmp_path / "stopped" / "ckpt" / "r")["model_state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_second_signal_quits_at_once(tmp_path) -> None:
    code = (
        "import os, signal, time\n"
        "from utils.interrupt import StopRequest\n"
        "with StopRequest('saving') as stop:\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    assert stop.requested\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(5)\n"
        "print('not reached')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == exit_code(signal.SIGINT) and "not reached" not in out.stdout
    assert out.stderr.splitlines() == [
        "saving",
        "interrupted again: quitting now; files saved before are kept",
    ]


def test_handlers_are_restored_after_the_block() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with StopRequest() as stop:
        assert signal.getsignal(signal.SIGTERM) != before and not stop.requested
    assert signal.getsignal(signal.SIGTERM) == before


def test_without_quitting_at_once_a_second_signal_meets_the_handlers_from_before() -> None:
    with pytest.raises(KeyboardInterrupt), StopRequest(quit_at_once=False) as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested
        os.kill(os.getpid(), signal.SIGINT)  # Python's own handler: KeyboardInterrupt
        time.sleep(5)
