"""The layers import only downwards: scripts and bench/ (the modes of benchmark.py) -> tracking/ ->
datasets/, nets/ -> utils/."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("utils", "nets", "datasets", "tracking", "bench")
# What each package may import from the project.
# bench/ is script-level code: of the scripts, only benchmark.py imports it.
ALLOWED = {
    "utils": set(),
    "nets": {"utils"},
    "datasets": {"utils"},
    "tracking": {"utils", "nets", "datasets"},
    "bench": {"utils", "nets", "datasets", "tracking"},
}


def project_imports(path: Path) -> set[str]:
    """The top-level project modules or packages that a file imports."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    scripts = {p.stem for p in REPO.glob("*.py")}
    return names & (set(PACKAGES) | scripts)


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_point_down(package: str) -> None:
    for path in sorted((REPO / package).glob("*.py")):
        upward = project_imports(path) - ALLOWED[package] - {package}
        assert not upward, f"{path.relative_to(REPO)} imports {sorted(upward)}"


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import torch\nfrom tracking.frames import open_frames\nfrom nets import pips2\n")
    assert project_imports(bad) == {"tracking", "nets"}
    bad.write_text("import benchmark\nfrom bench.report import Report\n")
    assert project_imports(bad) == {"benchmark", "bench"}
