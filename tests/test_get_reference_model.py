import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent.parent / "get_reference_model.sh"

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")


def run(tmp_path: Path, url: str) -> subprocess.CompletedProcess:
    shutil.copy(SCRIPT, tmp_path / "get_reference_model.sh")
    return subprocess.run(
        ["bash", "get_reference_model.sh"],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin:/usr/local/bin", "REFERENCE_MODEL_URL": url},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_download_and_extract(tmp_path: Path) -> None:
    src = tmp_path / "src" / "reference_model"
    src.mkdir(parents=True)
    (src / "model-000200000.pth").write_bytes(b"weights")
    archive = tmp_path / "src" / "reference_model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname="reference_model")
    work = tmp_path / "work"
    work.mkdir()
    result = run(work, archive.as_uri())
    assert result.returncode == 0, result.stderr
    assert (work / "reference_model" / "model-000200000.pth").read_bytes() == b"weights"
    assert sorted(p.name for p in work.iterdir()) == ["get_reference_model.sh", "reference_model"]


@pytest.mark.parametrize("content", [None, b"not a tar archive"])
def test_failure_leaves_nothing_behind(tmp_path: Path, content: bytes | None) -> None:
    bad = tmp_path / "bad.tar.gz"
    if content is not None:
        bad.write_bytes(content)
    work = tmp_path / "work"
    work.mkdir()
    result = run(work, bad.as_uri())
    assert result.returncode != 0
    assert "get_reference_model.sh:" in result.stderr
    assert sorted(p.name for p in work.iterdir()) == ["get_reference_model.sh"]
