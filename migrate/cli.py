"""The ``cmigrate`` command line: a thin layer over the library.

Errors: the root :class:`MigrationError` is caught here and printed as one line; exit 1. Usage errors exit 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from migrate import __version__
from migrate.errors import MigrationError

COMMANDS = ("lab",)


def _say(quiet: bool):
    return (lambda s: None) if quiet else (lambda s: print(f"lab: {s}", file=sys.stderr, flush=True))


def cmd_lab(args: argparse.Namespace) -> int:
    from migrate import lab
    if args.action == "up":
        lab.up(_say(args.quiet))
        return 0
    if args.action == "down":
        lab.down(_say(args.quiet))
        return 0
    return lab_status(args.json)


def lab_status(as_json: bool) -> int:
    from migrate import lab
    from migrate.hostinfo import criu_info
    from transport.ssh import SSHHost
    rows = []
    for h in lab.HOSTS:
        st = lab.host_status(h)
        row = {"host": h.name, "address": h.address, "netns": st.netns, "sshd": st.sshd,
               "dockerd": st.dockerd, "test_image": st.test_image, "criu": None}
        if st.sshd:
            try:
                with SSHHost(h.name, str(lab.SSH_CONFIG)) as remote:
                    row["criu"] = criu_info(remote).to_dict()
            except MigrationError as exc:
                row["error"] = exc.line()
        rows.append(row)
    up = all(r["sshd"] and r["dockerd"] and r["test_image"] and r["criu"] and r["criu"]["check_ok"] for r in rows)
    if as_json:
        print(json.dumps({"up": up, "ssh_config": str(lab.SSH_CONFIG), "hosts": rows}, indent=2))
        return 0 if up else 1
    yes = lambda b: "yes" if b else "no"  # noqa: E731
    for r in rows:
        c = r["criu"] or {}
        print(f"{r['host']}  address {r['address']}")
        print(f"  sshd        {'up' if r['sshd'] else 'down'}")
        print(f"  dockerd     {r['dockerd'] or 'down'}" + ("" if r["test_image"] or not r["dockerd"]
                                                        else " (test image missing)"))
        if c:
            print(f"  criu        {c['version'] or 'not installed'}; criu check: {c['check_message']}")
            print(f"  dirty tracking (pre-copy)  {yes(c['dirty_tracking'])}")
            print(f"  userfaultfd (post-copy)    {yes(c['uffd'])}")
            print(f"  modes       {', '.join(c['modes']) or 'none'}")
        elif "error" in r:
            print(f"  criu        unknown: {r['error']}")
    print(f"lab is {'up' if up else 'DOWN'}; ssh config: {lab.SSH_CONFIG}")
    return 0 if up else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cmigrate", description="Live-migrate running Docker containers between hosts with CRIU.")
    parser.add_argument("--version", action="version", version=f"cmigrate {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("lab", help="the local two-host lab (hostA, hostB) for demos and tests")
    p.add_argument("action", choices=("up", "status", "down"))
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    p.add_argument("--json", action="store_true", help="status as JSON")
    p.set_defaults(func=cmd_lab)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_usage(sys.stderr)
        return 2
    try:
        return args.func(args)
    except MigrationError as exc:
        if getattr(args, "json", False):
            print(json.dumps(exc.to_dict()))
        print(f"cmigrate: error: {exc.line()}", file=sys.stderr)
        if exc.detail:
            print("  " + exc.detail.replace("\n", "\n  "), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cmigrate: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
