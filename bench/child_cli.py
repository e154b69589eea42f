"""The end shared by the benchmark's child commands (bench/tutorial_run.py,
bench/markov_run.py): run, then write the metrics JSON or exit 2 with one line."""
from __future__ import annotations

import json
import sys
from collections.abc import Callable


def write_results(run: Callable[[], dict], output: str,
                  refused: tuple[type[Exception], ...]) -> int:
    """Calls run(); writes its dict to `output` as sorted, indented JSON and returns 0,
    or prints "error: ..." (one of `refused`: bad input) to stderr and returns 2,
    writing nothing."""
    try:
        results = run()
    except refused as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with open(output, "w") as f:
        json.dump(results, f, indent=1, sort_keys=True)
    return 0
