#!/usr/bin/env python3
"""A load-balancing loop on cmigrate's Python API: every INTERVAL seconds, even out the hosts' memory use with
the fewest live migrations; drain a host when a file names it (maintenance), then leave it out.

    python3 examples/balance_loop.py hostA hostB hostC [--interval 60] [--drain-file /run/drain] [--once]

Each round prints one line per move as it ends (progress events name their container) and the round's summary.
A move that fails rolls back on its own and the others go on; a container left frozen (its target lost at the
worst moment) is reported with the `cmigrate recover` to run, and this loop leaves that host alone until then.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import migrate
from migrate.errors import MigrationError


def on_event(event: dict) -> None:
    if event.get("event") == "move-done":
        extra = f" ({event['error']})" if event.get("error") else ""
        print(f"  {event['container']}: {event['source']} -> {event['destination']}: {event['result']}{extra}",
              flush=True)


def one_round(hosts: list[str], drain: Path | None, parallel: int) -> bool:
    draining = [h for h in (drain.read_text().split() if drain and drain.exists() else []) if h in hosts]
    for h in draining:   # maintenance first: everything off that host
        rest = [x for x in hosts if x not in draining]
        report = migrate.evacuate(h, rest, parallel=parallel, progress=on_event)
        print(report.summary(), flush=True)
    live = [h for h in hosts if h not in draining]
    if len(live) < 2:
        return True
    report = migrate.balance(live, by="memory", spread=20, parallel=parallel, progress=on_event)
    print(report.summary(), flush=True)
    for o in report.outcomes:
        if o.result == "frozen":
            print(f"  {o.container}: {o.error}", file=sys.stderr)
    return report.ok


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("hosts", nargs="+")
    p.add_argument("--interval", type=float, default=60.0)
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--drain-file", type=Path, help="a file listing hosts to empty (one per line)")
    p.add_argument("--once", action="store_true", help="one round, then exit (non-zero if a move failed)")
    args = p.parse_args()
    while True:
        try:
            ok = one_round(args.hosts, args.drain_file, args.parallel)
        except MigrationError as exc:   # a host that cannot be surveyed: try again next round
            print(f"round skipped: {exc.line()}", file=sys.stderr)
            ok = False
        if args.once:
            return 0 if ok else 1
        time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(main())
