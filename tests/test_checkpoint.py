import argparse
import os

import numpy as np
import pytest
import torch

from nets.pips2 import Pips
from utils import checkpoint
from utils.logger import parameter_table


@pytest.fixture(scope="module")
def model() -> Pips:
    torch.manual_seed(0)
    return Pips()


def test_round_trip_with_optimizer_and_scheduler(tmp_path, model: Pips) -> None:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=10)
    model(torch.rand(1, 3, 2, 2) * 30, torch.rand(1, 3, 3, 64, 64) * 255, iters=1).tracks.sum().backward()
    opt.step()
    sched.step()
    path = checkpoint.save(tmp_path, model, opt, sched, step=7, config={"lr": 1e-3})
    assert path.name == "model-000000007.pth"
    state = torch.load(path, weights_only=True)
    expected = {"model_state_dict", "optimizer_state_dict", "scheduler_state_dict", "step", "config"}
    assert expected <= set(state)

    torch.manual_seed(1)
    other = Pips()
    opt2 = torch.optim.AdamW(other.parameters(), lr=1e-3)
    sched2 = torch.optim.lr_scheduler.OneCycleLR(opt2, max_lr=1e-3, total_steps=10)
    assert checkpoint.load(tmp_path, other, opt2, sched2) == 7
    for (k, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)
    assert sched2.state_dict()["last_epoch"] == 1
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]


def test_official_format_with_and_without_module_prefix(tmp_path, model: Pips) -> None:
    sd = model.state_dict()
    for name, weights in [("plain", sd), ("ddp", {f"module.{k}": v for k, v in sd.items()})]:
        d = tmp_path / name
        d.mkdir()
        torch.save({"model_state_dict": weights, "optimizer_state_dict": {}}, d / "model-000200000.pth")
        (d / "notes.txt").write_text("unrelated files are ignored")
        fresh = Pips()
        assert checkpoint.load(d, fresh) == 200000
        torch.testing.assert_close(fresh.state_dict()["fnet.conv1.weight"], sd["fnet.conv1.weight"])


def test_keep_latest_and_directory_picks_highest_step(tmp_path, model: Pips) -> None:
    for step in (5, 10, 15, 20):
        checkpoint.save(tmp_path, model, step=step, keep_latest=2)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["model-000000015.pth", "model-000000020.pth"]
    assert checkpoint.latest_checkpoint(tmp_path).name == "model-000000020.pth"


def test_truncated_file_error_names_it(tmp_path, model: Pips) -> None:
    path = checkpoint.save(tmp_path, model, step=1)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match="model-000000001.pth.*truncated or corrupt"):
        checkpoint.load(path, Pips())


def test_strict_mismatch_lists_keys(tmp_path, model: Pips) -> None:
    sd = dict(model.state_dict())
    sd.pop("norm.weight")
    sd["extra.weight"] = torch.zeros(1)
    torch.save({"model_state_dict": sd}, tmp_path / "model-000000003.pth")
    with pytest.raises(ValueError, match=r"missing 1 \['norm.weight'\].*unexpected 1 \['extra.weight'\]"):
        checkpoint.load(tmp_path, Pips())


def test_missing_paths(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        checkpoint.load(tmp_path / "nothing.pth", Pips())
    with pytest.raises(FileNotFoundError, match="no model-XXXXXXXXX.pth checkpoint"):
        checkpoint.load(tmp_path, Pips())


def test_failed_write_leaves_old_checkpoints(tmp_path, model: Pips, monkeypatch) -> None:
    checkpoint.save(tmp_path, model, step=1)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        checkpoint.save(tmp_path, model, step=2, keep_latest=1)
    assert os.listdir(tmp_path) == ["model-000000001.pth"]


def test_parameter_table_total(model: Pips) -> None:
    table = parameter_table(model)
    assert table.endswith("total params: 17.57 M")
    assert "fnet.conv2.weight" in table and "norm.weight" not in table


def test_load_weights_points_at_download_script(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="get_reference_model.sh"):
        checkpoint.read_weights(tmp_path / "reference_model")


def test_directory_load_falls_back_to_newest_intact_checkpoint(tmp_path, model: Pips, caplog) -> None:
    for step in (1, 2, 3):
        checkpoint.save(tmp_path, model, step=step)
    newest = tmp_path / "model-000000003.pth"
    newest.write_bytes(newest.read_bytes()[:1000])  # a disk that filled up after the rename
    (tmp_path / "model-000000004.pth").write_text("not a checkpoint")
    with caplog.at_level("WARNING", logger="utils.checkpoint"):
        assert checkpoint.load(tmp_path, Pips()) == 2
    assert "model-000000004.pth is not a checkpoint" in caplog.text
    assert "model-000000003.pth: the file is truncated or corrupt" in caplog.text
    for step in (1, 2):
        (tmp_path / f"model-{step:09d}.pth").write_bytes(b"")
    with pytest.raises(ValueError, match="none of the 4 checkpoints in .* can be read"):
        checkpoint.load(tmp_path, Pips())


def test_save_removes_leftovers_of_a_killed_save_and_follows_umask(tmp_path, model: Pips) -> None:
    (tmp_path / ".model-000000001-4242.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / ".model-k2zq9v.tmp").write_bytes(b"half a checkpoint, older naming")
    (tmp_path / "notes.tmp").write_text("not ours")
    old = os.umask(0o027)
    try:
        path = checkpoint.save(tmp_path, model, step=2)
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model-000000002.pth", "notes.tmp"]
    assert path.stat().st_mode & 0o777 == 0o640


def test_files_that_are_not_checkpoints_say_so(tmp_path) -> None:
    text, npz, pickled = tmp_path / "garbage.pth", tmp_path / "arrays.pth", tmp_path / "objects.pth"
    text.write_text("hello\n" * 100)
    with open(npz, "wb") as f:
        np.savez(f, x=np.zeros(3))
    torch.save({"model_state_dict": {}, "args": argparse.Namespace(lr=1e-3)}, pickled)
    cases = {
        text: "garbage.pth is not a checkpoint \\(not a file written by torch.save\\)$",
        npz: "arrays.pth is not a checkpoint \\(a zip archive not written by torch.save\\)$",
        pickled: "objects.pth holds Python objects other than tensors and plain values",
    }
    for path, message in cases.items():
        with pytest.raises(ValueError, match=message) as err:
            checkpoint.load(path, Pips())
        assert "weights_only" not in str(err.value) and err.value.__cause__ is None
