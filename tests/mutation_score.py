"""Mutation score per module after `mutmut run`: caught mutants (killed or timed out) over checked ones.

    python -m tests.mutation_score            # reads ./mutants, as mutmut left it
    python -m tests.mutation_score --min 90   # exit status 1 if a module scores below 90%

Survivors are listed by `mutmut results`; `mutmut show <name>` prints one mutant's diff. The survivors
known to be equivalent, with the reason for each, are in tests/MUTANTS.md.
"""

import argparse
import json
import sys
from pathlib import Path

# mutmut's exit codes (mutmut 3.8): 1 and 3 killed, 0 survived, 5 and 33 no tests, 34 skipped, the
# rest timeouts or crashes, which also count as caught
SURVIVED, NO_TESTS, SKIPPED, NOT_CHECKED = {0}, {5, 33}, {34}, {None}


def scores(root: Path) -> list[tuple[str, int, int]]:
    """(module, caught, checked) for each mutated file under root."""
    rows = []
    for meta in sorted(root.rglob("*.py.meta")):
        try:
            codes = json.loads(meta.read_text())["exit_code_by_key"].values()
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{meta} is not a result file of mutmut 3 ({e!r}); rerun `mutmut run`") from None
        checked = [c for c in codes if c not in SKIPPED | NOT_CHECKED]
        caught = sum(c not in SURVIVED | NO_TESTS for c in checked)
        rows.append((meta.relative_to(root).as_posix().removesuffix(".meta"), caught, len(checked)))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mutants", default="mutants", help="mutmut's working folder (default: ./mutants)")
    parser.add_argument("--min", type=float, default=0.0, help="fail if a module's score is below this (%%)")
    args = parser.parse_args()
    try:
        rows = scores(Path(args.mutants))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not rows:
        print(f"error: no mutation results under {args.mutants}/ (run `mutmut run` first)", file=sys.stderr)
        return 2
    low = False
    for module, caught, checked in rows:
        rate = 100.0 * caught / checked if checked else float("nan")
        low |= not rate >= args.min
        print(f"{module:24s} {caught:5d} / {checked:5d} caught  {rate:5.1f}%")
    return int(low)


if __name__ == "__main__":
    sys.exit(main())
