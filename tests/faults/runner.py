"""Randomized fault runner: N trials, each a random cell of the fault matrix (seeded: the same seed gives the same
trials), then the counts of each verdict.

    python -m tests.faults.runner --trials 200 --seed 1     # the lab must be up (cmigrate lab up)
"""
from __future__ import annotations

import argparse
import random
import time

from tests.faults.matrix import CELLS, run_cell

VERDICTS = ("ok", "lost", "running-twice", "state-lost", "leftovers", "not-injected")


def main(argv: list[str] | None = None) -> dict[str, int]:
    p = argparse.ArgumentParser(prog="python -m tests.faults.runner", description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    counts = dict.fromkeys(VERDICTS, 0)
    started = time.monotonic()
    for i in range(args.trials):
        fault, point = rng.choice(CELLS)
        out = run_cell(fault, point)
        counts[out.verdict] += 1
        print(f"trial {i + 1:>4}/{args.trials}  {out.row()}", flush=True)
    print(f"seed {args.seed}, {args.trials} trials in {time.monotonic() - started:.0f} s: "
          + ", ".join(f"{k} {v}" for k, v in counts.items()), flush=True)
    return counts


if __name__ == "__main__":
    raise SystemExit(0 if (lambda c: c["ok"] == sum(c.values()))(main()) else 1)
