import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from tests import conftest
from tests.mutation_score import scores


def write_meta(path: Path, codes: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"exit_code_by_key": codes}))


def test_scores_count_kills_and_timeouts_over_checked_mutants(tmp_path: Path) -> None:
    # killed (1, 3), timed out (36), survived (0), no tests (33), skipped (34), not yet checked (None)
    write_meta(
        tmp_path / "utils" / "a.py.meta",
        {"m1": 1, "m2": 3, "m3": 36, "m4": 0, "m5": 33, "m6": 34, "m7": None},
    )
    write_meta(tmp_path / "nets" / "b.py.meta", {"m1": 1})
    assert scores(tmp_path) == [("nets/b.py", 1, 1), ("utils/a.py", 3, 5)]


def test_the_command_fails_below_the_minimum_and_without_results(tmp_path: Path) -> None:
    write_meta(tmp_path / "utils" / "a.py.meta", {"m1": 1, "m2": 1, "m3": 1, "m4": 0})
    root = Path(__file__).resolve().parents[1]

    def run(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "tests.mutation_score", "--mutants", *args]
        return subprocess.run(cmd, cwd=root, capture_output=True, text=True)

    ok = run(str(tmp_path), "--min", "75")
    assert ok.returncode == 0 and "utils/a.py" in ok.stdout and "75.0%" in ok.stdout
    assert run(str(tmp_path), "--min", "76").returncode == 1
    empty = run(str(tmp_path / "none"))
    assert empty.returncode == 2 and "no mutation results" in empty.stderr
    (tmp_path / "utils" / "b.py.meta").write_text("{not json")
    broken = run(str(tmp_path))
    assert broken.returncode == 2 and broken.stderr.startswith(
        f"error: {tmp_path / 'utils' / 'b.py.meta'} is not"
    )
    assert "Traceback" not in broken.stderr


def test_a_mutation_run_gives_each_mutant_its_tests_fastest_first(tmp_path: Path, monkeypatch) -> None:
    stats = tmp_path / "mutmut-stats.json"
    timings = {"t.py::slow": 2.0, "t.py::fast[1]": 0.1, "t.py::mid": 0.5}
    stats.write_text(json.dumps({"duration_by_test": timings}))
    monkeypatch.setattr(conftest, "MUTATION_STATS", stats)
    collected = ["t.py::slow", "t.py::new", "t.py::fast[1]", "t.py::mid"]

    def order() -> list[str]:
        items = [SimpleNamespace(nodeid=name) for name in collected]
        conftest.pytest_collection_modifyitems(items)
        return [item.nodeid for item in items]

    monkeypatch.delenv("MUTANT_UNDER_TEST", raising=False)
    assert order() == collected  # an ordinary test run keeps the collected order
    monkeypatch.setenv("MUTANT_UNDER_TEST", "utils.metrics.x_f__mutmut_1")
    assert order() == ["t.py::fast[1]", "t.py::mid", "t.py::slow", "t.py::new"]  # untimed tests last
    for broken in ("{", "[]", "{}"):
        stats.write_text(broken)
        assert order() == collected
    stats.unlink()
    assert order() == collected
