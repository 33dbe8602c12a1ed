import shutil
import tarfile
from pathlib import Path

import pytest
import torch

import hubconf
from nets.pips2 import Pips
from tracking import PipsTracker
from tracking.settings import CPU_SETTING
from utils.checkpoint import save

REPO = Path(__file__).resolve().parents[1]


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_hub_load_builds_pips_with_the_official_keys() -> None:
    model = torch.hub.load(str(REPO), "pips2", source="local", pretrained=False)
    assert type(model).__name__ == "Pips"
    state = model.state_dict()
    assert len(state) == 82
    assert state["fnet.conv2.weight"].shape == (256, 416, 3, 3)
    assert state["delta_block.first_block_conv.conv.weight"].shape == (128, 718, 3)
    assert state["delta_block.dense.weight"].shape == (2, 1024)


def test_hub_load_tracker() -> None:
    tracker = torch.hub.load(
        str(REPO), "pips2_tracker", source="local", pretrained=False, device="cpu", S=8, iters=2
    )
    assert type(tracker).__name__ == "PipsTracker"
    assert (tracker.S, tracker.iters, tracker.device) == (8, 2, torch.device("cpu"))
    assert tracker.image_size == CPU_SETTING.image_size  # not given, and no GPU


def _use_copied_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    """Run get_reference_model.sh from a copy in tmp_path, so it downloads into tmp_path/reference_model."""
    shutil.copy(REPO / "get_reference_model.sh", tmp_path / "get_reference_model.sh")
    monkeypatch.setattr(hubconf, "DOWNLOAD_SCRIPT", tmp_path / "get_reference_model.sh")
    monkeypatch.setattr(hubconf, "REFERENCE_DIR", tmp_path / "reference_model")
    monkeypatch.setenv("REFERENCE_MODEL_URL", url)


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_pretrained_downloads_when_absent(tmp_path, monkeypatch) -> None:
    torch.manual_seed(3)
    reference = Pips()
    save(tmp_path / "src" / "reference_model", reference, step=200000)
    archive = tmp_path / "src" / "reference_model.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        tar.add(tmp_path / "src" / "reference_model", arcname="reference_model")
    _use_copied_script(tmp_path, monkeypatch, archive.as_uri())
    model = hubconf.pips2(pretrained=True)
    assert (tmp_path / "reference_model" / "model-000200000.pth").is_file()
    assert same_weights(model, reference)
    monkeypatch.setattr(hubconf, "DOWNLOAD_SCRIPT", tmp_path / "absent.sh")  # now found without downloading
    tracker = hubconf.pips2_tracker(device="cpu")
    assert isinstance(tracker, PipsTracker)
    assert same_weights(tracker.model, reference)


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_pretrained_offline_gives_a_clear_error(tmp_path, monkeypatch) -> None:
    _use_copied_script(tmp_path, monkeypatch, (tmp_path / "unreachable.tar.gz").as_uri())
    with pytest.raises(
        RuntimeError,
        match=r"could not download the reference model .*\(get_reference_model.sh: "
        r"download failed \(offline or HTTP error\).*\); run get_reference_model.sh once online",
    ):
        hubconf.pips2(pretrained=True)
    assert not (tmp_path / "reference_model").exists()
