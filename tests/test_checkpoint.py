import argparse
import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from nets.pips2 import Pips
from utils import checkpoint
from utils.logger import parameter_table


class Tiny(torch.nn.Module):
    """A small model with parameters and buffers: checkpoints do not depend on the architecture."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fc = torch.nn.Linear(3, 2)
        self.norm = torch.nn.BatchNorm1d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.fc(x))


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def trained(seed: int = 0) -> tuple[Tiny, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    model = Tiny(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=10)
    for _ in range(2):
        model(torch.rand(4, 3)).square().sum().backward()
        opt.step()
        sched.step()
    return model, opt, sched


def test_round_trip_with_optimizer_and_scheduler(tmp_path: Path) -> None:
    model, opt, sched = trained()
    path = checkpoint.save(tmp_path, model, opt, sched, step=7, config={"lr": 1e-3})
    assert path == tmp_path / "model-000000007.pth"
    state = torch.load(path, weights_only=True)
    expected = {"model_state_dict", "optimizer_state_dict", "scheduler_state_dict", "step", "config"}
    assert set(state) == expected and state["step"] == 7 and state["config"] == {"lr": 1e-3}

    other = Tiny(seed=1)
    opt2 = torch.optim.AdamW(other.parameters(), lr=1e-3)
    sched2 = torch.optim.lr_scheduler.OneCycleLR(opt2, max_lr=1e-3, total_steps=10)
    assert not same_state(other.state_dict(), model.state_dict())
    assert checkpoint.load(tmp_path, other, opt2, sched2) == 7
    assert same_state(other.state_dict(), model.state_dict())
    assert sched2.state_dict()["last_epoch"] == 2 and sched2.get_last_lr() == sched.get_last_lr()
    moments, moments2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert all(same_state(moments[i], moments2[i]) for i in moments)

    bare = checkpoint.save(tmp_path / "bare", model, step=3)
    assert set(torch.load(bare, weights_only=True)) == {"model_state_dict", "step"}
    with pytest.raises(ValueError, match="model-000000003.pth has no optimizer state"):
        checkpoint.load(bare, Tiny(), opt2)
    with pytest.raises(ValueError, match="model-000000003.pth has no scheduler state"):
        checkpoint.load(bare, Tiny(), scheduler=sched2)


def test_official_format_with_and_without_prefixes(tmp_path: Path) -> None:
    sd = Tiny().state_dict()
    prefixed = {
        "plain": sd,
        "ddp": {f"module.{k}": v for k, v in sd.items()},
        "compiled_ddp": {f"module._orig_mod.{k}": v for k, v in sd.items()},
    }
    for name, weights in prefixed.items():
        d = tmp_path / name
        d.mkdir()
        torch.save({"model_state_dict": weights, "optimizer_state_dict": {}}, d / "model-000200000.pth")
        (d / "notes.txt").write_text("unrelated files are ignored")
        fresh = Tiny(seed=1)
        assert checkpoint.load(d, fresh) == 200000
        assert same_state(fresh.state_dict(), sd), name
    assert checkpoint.strip_prefixes({"module.module.a": 1, "b.module.c": 2}) == {"a": 1, "b.module.c": 2}


def test_a_raw_state_dict_file_and_its_step(tmp_path: Path) -> None:
    sd = Tiny().state_dict()
    torch.save(sd, tmp_path / "weights.pth")
    fresh = Tiny(seed=1)
    assert checkpoint.load(tmp_path / "weights.pth", fresh) == 0  # no step in the name or the file
    assert same_state(fresh.state_dict(), sd)
    torch.save(sd, tmp_path / "model-000000042.pth")
    assert checkpoint.read(tmp_path / "model-000000042.pth")["step"] == 42
    torch.save({"model_state_dict": sd, "step": 5}, tmp_path / "model-000000043.pth")
    assert checkpoint.read(tmp_path)["step"] == 5  # the stored step wins over the name
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="list.pth holds a list, not a dict"):
        checkpoint.read(tmp_path / "list.pth")
    torch.save({"weights": sd, "epoch": 3}, tmp_path / "other.pth")
    with pytest.raises(
        ValueError, match=r"other.pth has no 'model_state_dict' \(keys: \['epoch', 'weights'\]\)"
    ):
        checkpoint.read(tmp_path / "other.pth")


def test_listing_orders_by_step_and_ignores_other_files(tmp_path: Path) -> None:
    assert checkpoint.list_checkpoints(tmp_path / "missing") == []
    assert checkpoint.latest_checkpoint(tmp_path) is None
    for step in (20, 3, 100):
        torch.save({}, tmp_path / f"model-{step:09d}.pth")
    for other in ("model-12.pth", "model-000000007.pth.tmp", ".model-abc.tmp", "xmodel-000000500.pth"):
        (tmp_path / other).write_bytes(b"")
    (tmp_path / "model-000000999.pth").mkdir()  # a directory, not a checkpoint
    names = [p.name for p in checkpoint.list_checkpoints(tmp_path)]
    assert names == ["model-000000003.pth", "model-000000020.pth", "model-000000100.pth"]
    assert checkpoint.latest_checkpoint(tmp_path) == tmp_path / "model-000000100.pth"
    assert checkpoint.read_newest(tmp_path)[0] == tmp_path / "model-000000100.pth"
    assert checkpoint.read_newest(tmp_path / "model-000000003.pth")[0] == tmp_path / "model-000000003.pth"


def test_keep_latest_and_directory_picks_highest_step(tmp_path: Path) -> None:
    model = Tiny()
    for step in (5, 10, 15, 20):
        checkpoint.save(tmp_path, model, step=step, keep_latest=2)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["model-000000015.pth", "model-000000020.pth"]
    checkpoint.save(tmp_path, model, step=25, keep_latest=0)  # always keeps the one just written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model-000000025.pth"]
    for step in range(1, 8):
        checkpoint.save(tmp_path, model, step=step)
    assert len(checkpoint.list_checkpoints(tmp_path)) == 5  # the default keeps five


def test_truncated_file_error_names_it(tmp_path: Path) -> None:
    path = checkpoint.save(tmp_path, Tiny(), step=1)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match="model-000000001.pth.*truncated or corrupt"):
        checkpoint.load(path, Tiny())


def test_strict_mismatch_lists_keys(tmp_path: Path) -> None:
    sd = dict(Tiny().state_dict())
    sd.pop("norm.weight")
    sd["extra.weight"] = torch.zeros(1)
    sd["fc.bias"] = torch.zeros(5)
    torch.save({"model_state_dict": sd}, tmp_path / "model-000000003.pth")
    with pytest.raises(
        ValueError,
        match=r"missing 1 \['norm.weight'\], unexpected 1 \['extra.weight'\], wrong shape 1 \['fc.bias'\]",
    ):
        checkpoint.load(tmp_path, Tiny())
    sd["fc.bias"] = torch.full((2,), 3.0)
    torch.save({"model_state_dict": sd}, tmp_path / "model-000000004.pth")
    model = Tiny()
    assert checkpoint.load(tmp_path, model, strict=False) == 4  # what fits is loaded
    assert model.fc.bias.tolist() == [3.0, 3.0]


def test_missing_paths(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*nothing.pth"):
        checkpoint.load(tmp_path / "nothing.pth", Tiny())
    with pytest.raises(FileNotFoundError, match="no model-XXXXXXXXX.pth checkpoint in directory"):
        checkpoint.load(tmp_path, Tiny())


def test_a_write_failing_midway_leaves_the_previous_checkpoint_intact(tmp_path: Path, monkeypatch) -> None:
    old_model = Tiny(seed=0)
    first = checkpoint.save(tmp_path, old_model, step=1)
    first_bytes = first.read_bytes()
    real_save = torch.save
    written = []

    def save_half_then_fail(obj, f) -> None:
        buffer = io.BytesIO()
        real_save(obj, buffer)
        data = buffer.getvalue()
        f.write(data[: len(data) // 2])  # half the new checkpoint reaches the disk, then the disk is full
        f.flush()
        written.append(os.fstat(f.fileno()).st_size)
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        checkpoint.save(tmp_path, Tiny(seed=1), step=2, keep_latest=1)
    assert written and written[0] > 1000  # the fault came in the middle of a real write
    assert os.listdir(tmp_path) == ["model-000000001.pth"]  # no partial file, nothing pruned
    with pytest.raises(OSError, match="No space left"):  # writing the same step again (a resumed run)
        checkpoint.save(tmp_path, Tiny(seed=1), step=1)
    assert os.listdir(tmp_path) == ["model-000000001.pth"]
    assert first.read_bytes() == first_bytes
    fresh = Tiny(seed=2)
    assert checkpoint.load(tmp_path, fresh) == 1
    assert same_state(fresh.state_dict(), old_model.state_dict())


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_a_failure_before_the_rename_leaves_no_file_behind(tmp_path: Path, monkeypatch, failing: str) -> None:
    checkpoint.save(tmp_path, Tiny(), step=1)

    def fail(*args) -> None:
        raise OSError(f"{failing} failed")

    monkeypatch.setattr(os, failing, fail)
    with pytest.raises(OSError, match=f"{failing} failed"):
        checkpoint.save(tmp_path, Tiny(seed=1), step=2, keep_latest=1)
    assert os.listdir(tmp_path) == ["model-000000001.pth"]


def test_unwrap_reaches_the_plain_module() -> None:
    model = Tiny()

    class Compiled(torch.nn.Module):  # what torch.compile puts around a module
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self._orig_mod = inner

    assert checkpoint.unwrap(model) is model
    assert checkpoint.unwrap(Compiled(torch.nn.DataParallel(Compiled(model)))) is model


def test_save_stores_the_unwrapped_weights(tmp_path: Path) -> None:
    model = Tiny()
    path = checkpoint.save(tmp_path, torch.nn.DataParallel(model), step=1)
    assert same_state(torch.load(path, weights_only=True)["model_state_dict"], model.state_dict())
    fresh = Tiny(seed=3)
    checkpoint.load(path, torch.nn.DataParallel(fresh))
    assert same_state(fresh.state_dict(), model.state_dict())


def test_parameter_table_total() -> None:
    table = parameter_table(Pips())
    assert table.endswith("total params: 17.57 M")
    assert "fnet.conv2.weight" in table and "norm.weight" not in table


def test_load_weights_points_at_download_script(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="reference_model. Run ./get_reference_model.sh"):
        checkpoint.read_weights(tmp_path / "reference_model")
    path = checkpoint.save(tmp_path, Tiny(), step=9)
    found, state = checkpoint.read_weights(path)
    assert found == path and state["step"] == 9 and same_state(state["model_state_dict"], Tiny().state_dict())


def test_directory_load_falls_back_to_newest_intact_checkpoint(tmp_path: Path, caplog) -> None:
    for step in (1, 2, 3):
        checkpoint.save(tmp_path, Tiny(seed=step), step=step)
    newest = tmp_path / "model-000000003.pth"
    newest.write_bytes(newest.read_bytes()[:1000])  # a disk that filled up after the rename
    (tmp_path / "model-000000004.pth").write_text("not a checkpoint")
    fresh = Tiny(seed=5)
    with caplog.at_level("WARNING", logger="utils.checkpoint"):
        assert checkpoint.load(tmp_path, fresh) == 2
    assert same_state(fresh.state_dict(), Tiny(seed=2).state_dict())
    fourth, third = tmp_path / "model-000000004.pth", tmp_path / "model-000000003.pth"
    assert [r.getMessage() for r in caplog.records] == [
        f"{fourth} is not a checkpoint (not a file written by torch.save); trying the checkpoint before it",
        f"cannot read checkpoint {third}: the file is truncated or corrupt; trying the checkpoint before it",
    ]
    for step in (1, 2):
        (tmp_path / f"model-{step:09d}.pth").write_bytes(b"")
    with pytest.raises(ValueError, match="none of the 4 checkpoints in .* can be read"):
        checkpoint.load(tmp_path, Tiny())


def test_save_removes_leftovers_of_a_killed_save_and_follows_umask(tmp_path: Path) -> None:
    (tmp_path / ".model-000000001-4242.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / ".model-k2zq9v.tmp").write_bytes(b"half a checkpoint, older naming")
    (tmp_path / "notes.tmp").write_text("not ours")
    old = os.umask(0o027)
    try:
        path = checkpoint.save(tmp_path, Tiny(), step=2)
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model-000000002.pth", "notes.tmp"]
    assert path.stat().st_mode & 0o777 == 0o640


def test_files_that_are_not_checkpoints_say_so(tmp_path: Path) -> None:
    text, npz, pickled = tmp_path / "garbage.pth", tmp_path / "arrays.pth", tmp_path / "objects.pth"
    text.write_text("hello\n" * 100)
    with open(npz, "wb") as f:
        np.savez(f, x=np.zeros(3))
    torch.save({"model_state_dict": {}, "args": argparse.Namespace(lr=1e-3)}, pickled)
    cases = {
        text: "garbage.pth is not a checkpoint \\(not a file written by torch.save\\)$",
        npz: "arrays.pth is not a checkpoint \\(a zip archive not written by torch.save\\)$",
        pickled: "objects.pth holds Python objects other than tensors and plain values; they are not loaded, "
        "as unpickling them can run any code$",
    }
    for path, message in cases.items():
        with pytest.raises(ValueError, match=message) as err:
            checkpoint.load(path, Tiny())
        assert "weights_only" not in str(err.value) and err.value.__cause__ is None


class WithHead(Tiny):
    """Tiny with an extra head, whose parameters older checkpoints lack."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)
        self.head = torch.nn.Linear(2, 1)


def test_optional_parameters_may_be_missing_and_are_named_once(tmp_path: Path, caplog) -> None:
    path = checkpoint.save(tmp_path, Tiny(seed=1), step=4)
    model = WithHead(seed=2)
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
    with caplog.at_level("WARNING", logger="utils.checkpoint"):
        assert checkpoint.load(path, model, optional=("head.", "extra.")) == 4
    assert [r.getMessage() for r in caplog.records] == [
        f"checkpoint {path} has no head.* parameters: they start from their initialisation, untrained"
    ]
    assert same_state(model.head.state_dict(), head_before)
    backbone = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    assert same_state(backbone, Tiny(seed=1).state_dict())
    with pytest.raises(ValueError, match=r"missing 2 \['head.bias', 'head.weight'\]"):
        checkpoint.load(path, WithHead())  # not optional: strict
    state = torch.load(path, weights_only=True)
    del state["model_state_dict"]["fc.bias"]
    with pytest.raises(ValueError, match=r"missing 1 \['fc.bias'\], unexpected 0 \[\], wrong shape 0 \[\]$"):
        checkpoint.load_state(path, state, WithHead(), optional=("head.",))  # only head.* may be missing
    with pytest.raises(ValueError, match=r"missing 1 \['fc.bias'\]"):
        checkpoint.load_state(path, state, Tiny())  # strict by default
    caplog.clear()
    fc_only = {
        "step": 4,
        "model_state_dict": {k: v for k, v in Tiny(seed=1).state_dict().items() if "fc." in k},
    }
    with caplog.at_level("WARNING", logger="utils.checkpoint"):
        checkpoint.load_state(
            path, fc_only, WithHead(), optional=("norm.", "head.")
        )  # both absent, named once
    assert [r.getMessage() for r in caplog.records] == [
        f"checkpoint {path} has no head.*, norm.* parameters: they start from their initialisation, untrained"
    ]


def test_mismatch_lists_six_names_of_each_kind(tmp_path: Path) -> None:
    names = sorted(Tiny().state_dict())  # 7 entries
    others = {f"extra.{i}": torch.zeros(1) for i in range(7)}
    torch.save({"model_state_dict": others}, tmp_path / "others.pth")
    with pytest.raises(ValueError) as err:
        checkpoint.load(tmp_path / "others.pth", Tiny())
    assert str(err.value).endswith(
        f"missing 7 {names[:6]}, unexpected 7 {sorted(others)[:6]}, wrong shape 0 []"
    )
    reshaped = {k: torch.zeros(9) for k in names}
    torch.save({"model_state_dict": reshaped}, tmp_path / "reshaped.pth")
    with pytest.raises(ValueError) as err:
        checkpoint.load(tmp_path / "reshaped.pth", Tiny())
    assert str(err.value).endswith(f"missing 0 [], unexpected 0 [], wrong shape 7 {names[:6]}")
    torch.save({"model_state_dict": Tiny().state_dict() | {"extra.0": torch.zeros(1)}}, tmp_path / "more.pth")
    with pytest.raises(ValueError, match=r"missing 0 \[\], unexpected 1 \['extra.0'\], wrong shape 0 \[\]$"):
        checkpoint.load(tmp_path / "more.pth", Tiny())
    keys = {f"k{i}": i for i in range(10)}
    torch.save(keys, tmp_path / "keys.pth")
    with pytest.raises(ValueError, match=r"has no 'model_state_dict' \(keys: \['k0', .*'k7'\]\)$") as err:
        checkpoint.read(tmp_path / "keys.pth")
    assert "'k8'" not in str(err.value)


def test_save_defaults_and_new_directories(tmp_path: Path) -> None:
    path = checkpoint.save(tmp_path / "runs" / "a" / "ckpt", Tiny())
    assert path == tmp_path / "runs" / "a" / "ckpt" / "model-000000000.pth"
    assert torch.load(path, weights_only=True)["step"] == 0
    old = os.umask(0o002)
    try:
        path = checkpoint.save(tmp_path, Tiny(), step=1)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o664  # read and write for everyone the umask lets


def test_a_file_that_cannot_be_created_reports_why(tmp_path: Path, monkeypatch) -> None:
    def refuse(*args) -> None:
        raise PermissionError("read-only file system")

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(PermissionError, match="read-only file system"):  # not a complaint about the cleanup
        checkpoint.save(tmp_path, Tiny(), step=1)
