"""The ``cmigrate`` command line: a thin layer over the library.

Errors: the root :class:`MigrationError` is caught here and printed as one line; exit 1. Usage errors exit 2.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

from migrate import __version__
from migrate.errors import Interrupted, MigrationError, UsageError, printable
from transport.agent import DEFAULT_IO_TIMEOUT



def _say(quiet: bool):
    return (lambda s: None) if quiet else (lambda s: print(f"lab: {s}", file=sys.stderr, flush=True))


def cmd_lab(args: argparse.Namespace) -> int:
    from migrate import lab
    if args.action == "up":
        lab.up(_say(args.quiet), args.hosts)
        return 0
    if args.hosts is not None:
        raise UsageError("--hosts goes with lab up")
    if args.action == "down":
        lab.down(_say(args.quiet))
        return 0
    return lab_status(args.json)


def lab_status(as_json: bool) -> int:
    from migrate import lab
    from migrate.hostinfo import criu_info, platform_line
    from transport.ssh import SSHHost
    rows = []
    for h in lab.hosts():
        st = lab.host_status(h)
        row = {"host": h.name, "address": h.address, "netns": st.netns, "sshd": st.sshd,
               "dockerd": st.dockerd, "platform": lab.platform_versions(h), "test_image": st.test_image,
               "criu": None}
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
        print(f"  dockerd     {platform_line(r['platform']) if r['dockerd'] else 'down'}"
              + ("" if r["test_image"] or not r["dockerd"] else " (test image missing)"))
        if c:
            print(f"  criu        {c['version'] or 'not installed'}; criu check: {c['check_message']}")
            print(f"  dirty tracking (pre-copy)  {yes(c['dirty_tracking'])}")
            print(f"  userfaultfd (post-copy)    {yes(c['uffd'])}")
            print(f"  modes       {', '.join(c['modes']) or 'none'}")
        elif "error" in r:
            print(f"  criu        unknown: {r['error']}")
    print(f"lab is {'up' if up else 'DOWN'}; ssh config: {lab.SSH_CONFIG}")
    return 0 if up else 1


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _emit(args: argparse.Namespace, value, human: str | None) -> None:
    if args.json:
        print(json.dumps(value, indent=2))
    elif human is not None and not args.quiet:
        print(human)


def cmd_checkpoint(args: argparse.Namespace) -> int:
    from migrate import checkpoint
    where = {"host": args.host, "checkpoint_dir": args.checkpoint_dir, "ssh_config": args.ssh_config}
    if args.action == "create" and args.all:
        if args.name is not None or args.container is None:
            raise UsageError("checkpoint create --all takes one name: the checkpoint's")
        return _outcomes(args, checkpoint.create_all(args.container, leave_running=args.leave_running,
                                                     host=args.host, ssh_config=args.ssh_config), "checkpointed")
    if args.action == "create":
        if args.name is None:
            raise UsageError("checkpoint create needs CONTAINER NAME (or --all NAME)")
        res = checkpoint.create(args.container, args.name, leave_running=args.leave_running, **where)
        _emit(args, res, res["name"])
    elif args.action == "ls":
        res = checkpoint.ls(args.container, **where)
        lines = [f"{'CHECKPOINT NAME':<24} {'CREATED':<20} SIZE"]
        lines += [f"{c['name']:<24} {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(c['created'])):<20} "
                  f"{_human_bytes(c['bytes'])}" for c in res]
        _emit(args, res, "\n".join(lines))
    elif args.action == "diff":
        res = checkpoint.diff(args.container, args.name, args.other, **where)
        _emit(args, res, checkpoint.render_diff(res))
    elif args.action == "inspect":
        if args.file and (args.container or args.name):
            raise UsageError("checkpoint inspect takes CONTAINER NAME or --file FILE, not both")
        if args.file:
            res = checkpoint.inspect_file(args.file, host=args.host, search=args.search, ssh_config=args.ssh_config)
        elif args.container and args.name:
            res = checkpoint.inspect(args.container, args.name, search=args.search, **where)
        else:
            raise UsageError("checkpoint inspect needs CONTAINER NAME, or --file FILE")
        if args.format == "json":
            args.json = True
        _emit(args, res, checkpoint.render(res))
    elif args.action == "export":
        oci = (args.tag or f"checkpoint-{args.container.lower()}:{args.name}") if args.oci else None
        if args.tag and not args.oci:
            raise UsageError("--tag names the image of --oci: give both")
        res = checkpoint.export(args.container, args.name, args.output, with_image=args.with_image, oci=oci, **where)
        _emit(args, res, f"exported checkpoint {res['name']} of {res['container']} to {res['file']}"
                         + (f" as OCI image {res['oci']} (docker load -i {res['file']})" if res["oci"] else "") + ": "
                         f"{_human_bytes(res['bytes'])} ({res['files']} files, {_human_bytes(res['raw_bytes'])} "
                         f"uncompressed{', with its image' if res['image_included'] else ''})")
    elif args.action == "import":
        res = checkpoint.import_file(args.file, host=args.host, ssh_config=args.ssh_config, name=args.name,
                                     start=args.start, allow_privileged=args.allow_privileged,
                                     ignore_cpu=args.ignore_cpu)
        _emit(args, res, f"imported {res['container']} with checkpoint {res['checkpoint']}"
                         + (", image loaded" if res["image_loaded"] else "")
                         + (": running" if res["started"] else f": start it with cmigrate start --checkpoint "
                            f"{res['checkpoint']} {res['container']}"))
    else:
        res = checkpoint.rm(args.container, args.name, **where)
        _emit(args, res, None)
    return 0


def _outcomes(args: argparse.Namespace, outcomes: list[dict], done: str) -> int:
    """One line per container of a whole-host command; non-zero if any failed."""
    lines = [f"{o['container']}: {done}" if o["ok"] else f"{o['container']}: failed: {o['error']}" for o in outcomes]
    failed = sum(not o["ok"] for o in outcomes)
    if failed:
        lines.append(f"{failed} of {len(outcomes)} failed")
    _emit(args, outcomes, "\n".join(lines))
    return 1 if failed else 0


def cmd_start(args: argparse.Namespace) -> int:
    from migrate import checkpoint
    if args.all:
        if args.container is not None or args.name:
            raise UsageError("start --checkpoint NAME --all takes no container (nor --name)")
        if args.checkpoint_dir:
            raise UsageError("--all keeps each checkpoint in its container's own directory: leave out "
                             "--checkpoint-dir")
        return _outcomes(args, checkpoint.start_all(args.checkpoint, host=args.host, ssh_config=args.ssh_config),
                         "running")
    if args.container is None:
        raise UsageError("start needs a CONTAINER (or --all)")
    res = checkpoint.start(args.container, args.checkpoint, host=args.host, checkpoint_dir=args.checkpoint_dir,
                           ssh_config=args.ssh_config, name=args.name)
    _emit(args, res, res["container"] if args.name else args.container)
    return 0


def cmd_recover(args: argparse.Namespace) -> int:
    from migrate.recover import recover
    outcomes = recover(args.host_name, args.container, ssh_config=args.ssh_config, io_timeout=args.io_timeout)
    if args.json:
        print(json.dumps([o.__dict__ for o in outcomes], indent=2))
    elif not outcomes:
        print(f"nothing to recover on {args.host_name}" + (f" for {args.container}" if args.container else ""))
    for o in outcomes:
        if not args.json:
            print(o.line())
    return 0 if all(o.result in ("completed", "rolled-back") for o in outcomes) else 1


def cmd_bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from migrate import bench
    sizes = [int(x) for x in args.sizes.split(",") if x]
    dirty = [float(x) for x in args.dirty.split(",") if x]
    methods = tuple(m for m in args.methods.split(",") if m)
    unknown = set(methods) - set(bench.METHODS)
    if unknown:
        raise UsageError(f"unknown method(s) {', '.join(sorted(unknown))}: choose from {', '.join(bench.METHODS)}")
    procs = [int(x) for x in args.procs.split(",") if x]
    if any(not 1 <= n <= 4000 for n in procs):
        raise UsageError("--procs: process counts from 1 to 4000")
    if args.fleet:
        from migrate.bench import fleet as fleet_bench
        say = (lambda s: None) if args.quiet else (lambda s: print(s, flush=True))
        trials = fleet_bench.run(args.repeats, Path(args.out), counters=args.fleet_counters, say=say)
        if not args.quiet:
            print((Path(args.out) / "fleet.md").read_text())
        return 0 if all(t.moved == t.went_on == t.containers for t in trials) else 1
    from migrate import lab
    links = []
    for spec in args.link or ["none"]:
        rate, _, delay = spec.partition(",")
        if spec != "none" and (not lab.LINK_RATE.fullmatch(rate) or (delay and not lab.LINK_DELAY.fullmatch(delay))):
            raise UsageError(f"--link {spec!r}: give RATE[,DELAY] like 1gbit or 100mbit,1ms, or none")
        links.append(None if spec == "none" else (rate, delay or None))
    link_sizes = None if args.link_sizes is None else [int(x) for x in args.link_sizes.split(",") if x]
    db_sizes = [int(x) for x in args.db.split(",") if x]
    if any(not 1 <= mib <= 16384 for mib in db_sizes):
        raise UsageError("--db: sizes from 1 to 16384 MiB")
    trials = bench.run(sizes, dirty, args.repeats, Path(args.out), methods=methods, counter=not args.no_counter,
                       say=(lambda s: None) if args.quiet else (lambda s: print(s, flush=True)), procs=procs,
                       links=links, db_sizes=db_sizes, link_sizes=link_sizes)
    if not args.quiet:
        print((Path(args.out) / "summary.md").read_text())
        print(f"results: {args.out}/results.csv, {args.out}/summary.md, {args.out}/plot.png")
    return 0 if all(t.ok for t in trials) else 1


def _fleet_progress(args: argparse.Namespace):
    """One line per finished move (and a lost target) on stderr, as they happen: moves run side by side."""
    if args.quiet or args.json:
        return None

    def show(event: dict) -> None:
        kind = event.get("event")
        if kind == "move-done":
            what = event["result"] + (f", downtime {event['downtime']:.3f} s" if event.get("downtime") is not None
                                      else "") + (f": {event['error']}" if event.get("error") else "")
            print(f"cmigrate: {event['container']}: {event['source']} -> {event['destination']}: {what}",
                  file=sys.stderr, flush=True)
        elif kind == "target-lost":
            print(f"cmigrate: {event['host']} lost ({event['error']}): nothing more goes there", file=sys.stderr,
                  flush=True)
        elif kind == "fleet-interrupted":
            print(f"cmigrate: {event['message']}", file=sys.stderr, flush=True)
    return show


def _fleet_options(args: argparse.Namespace) -> dict:
    return dict(parallel=args.parallel, dry_run=args.dry_run, progress=_fleet_progress(args),
                ssh_config=args.ssh_config, io_timeout=args.io_timeout, mode=args.mode, data_path=args.data_path,
                allow_privileged=args.allow_privileged, tcp_close=args.tcp_close, ignore_cpu=args.ignore_cpu)


def _fleet_result(args: argparse.Namespace, report) -> int:
    if args.json:
        print(report.to_json())
    elif not args.quiet:
        print(report.human())
    elif not report.ok:
        print(report.summary(), file=sys.stderr)
    return 130 if report.interrupted else 0 if report.ok else 1


def cmd_evacuate(args: argparse.Namespace) -> int:
    from migrate.fleet import evacuate
    targets = [t for t in args.to.split(",") if t]
    return _fleet_result(args, evacuate(args.host_name, targets, filters=args.filter,
                                        containers=args.containers or None, **_fleet_options(args)))


def cmd_balance(args: argparse.Namespace) -> int:
    from migrate.fleet import balance
    return _fleet_result(args, balance(args.hosts, by=args.by, spread=args.spread, max_use=args.max_use,
                                       filters=args.filter, **_fleet_options(args)))


def _seconds(text: str) -> float:
    """A positive number of seconds, for argparse."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def _common(sub: bool) -> argparse.ArgumentParser:
    """Options accepted both before and after the command (``cmigrate -H hostA checkpoint ls cr``)."""
    p = argparse.ArgumentParser(add_help=False)
    d = argparse.SUPPRESS if sub else None
    p.add_argument("-H", "--host", default=d if sub else "local", metavar="HOST",
                   help="where the container is: 'local' (default) or an SSH host name")
    p.add_argument("-F", "--ssh-config", default=d, metavar="FILE", help="SSH config to resolve host names")
    p.add_argument("--json", action="store_true", default=d if sub else False, help="machine-readable output")
    p.add_argument("-q", "--quiet", action="store_true", default=d if sub else False, help="print only errors")
    return p


def build_parser() -> argparse.ArgumentParser:
    common = _common(sub=True)
    parser = argparse.ArgumentParser(
        prog="cmigrate", parents=[_common(sub=False)],
        description="Live-migrate running Docker containers between hosts with CRIU. The main job: "
                    "cmigrate [migrate] CONTAINER SOURCE DESTINATION (see: cmigrate migrate --help); 'migrate' is "
                    "needed only for a container named like a command.")
    parser.add_argument("--version", action="version", version=f"cmigrate {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("lab", parents=[common], help="the local lab (hostA, hostB; with --hosts 3 hostC) for demos "
                       "and tests")
    p.add_argument("action", choices=("up", "status", "down"))
    p.add_argument("--hosts", type=int, choices=(2, 3), metavar="N",
                   help="lab up: bring it up with N hosts, 2 (default) or 3 (adds hostC, for evacuate and balance)")
    p.set_defaults(func=cmd_lab)

    cp = sub.add_parser("checkpoint", help="create, list, inspect and remove checkpoints of a container")
    csub = cp.add_subparsers(dest="action", metavar="ACTION", required=True)
    dir_help = "use a custom checkpoint storage directory (absolute path on the container's host)"
    p = csub.add_parser("create", parents=[common], help="checkpoint a running container (or --all NAME: every "
                        "one on the host)")
    p.add_argument("--leave-running", action="store_true", help="leave the container running after checkpoint")
    p.add_argument("--checkpoint-dir", metavar="DIR", help=dir_help)
    p.add_argument("--all", action="store_true", help="checkpoint every running container of the host, each in "
                   "its own directory (to restart the host: start --checkpoint NAME --all after it)")
    p.add_argument("container", metavar="CONTAINER")
    p.add_argument("name", nargs="?", metavar="NAME")
    p.set_defaults(func=cmd_checkpoint)
    p = csub.add_parser("ls", parents=[common], help="list a container's checkpoints")
    p.add_argument("--checkpoint-dir", metavar="DIR", help=dir_help)
    p.add_argument("container")
    p.set_defaults(func=cmd_checkpoint)
    p = csub.add_parser("inspect", parents=[common],
                        help="show what a checkpoint holds: processes, files, sockets, memory, mounts, layer")
    p.add_argument("--checkpoint-dir", metavar="DIR", help=dir_help)
    p.add_argument("--search", metavar="TEXT", help="also say which process and address hold TEXT in memory")
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format (default text)")
    p.add_argument("--file", metavar="FILE", help="inspect a checkpoint file (from checkpoint export) instead")
    p.add_argument("container", nargs="?")
    p.add_argument("name", nargs="?")
    p.set_defaults(func=cmd_checkpoint)
    p = csub.add_parser("export", parents=[common], help="write a checkpoint, with its container's layer, volumes "
                        "and configuration, to one file")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="the file to write (here, not on HOST)")
    p.add_argument("--with-image", action="store_true", help="put the container's image in the file too")
    p.add_argument("--oci", action="store_true", help="write an OCI image of the checkpoint instead, which docker "
                   "load takes (org.criu.checkpoint.* annotations; uncompressed)")
    p.add_argument("--tag", metavar="NAME:TAG", help="the --oci image's name (default checkpoint-CONTAINER:NAME)")
    p.add_argument("--checkpoint-dir", metavar="DIR", help=dir_help)
    p.add_argument("container")
    p.add_argument("name")
    p.set_defaults(func=cmd_checkpoint, file=None)
    p = csub.add_parser("import", parents=[common], help="make a checkpoint file's container, stopped, with its "
                        "checkpoint, on HOST")
    p.add_argument("--name", metavar="NEW", help="name the container NEW (default: as it was named)")
    p.add_argument("--start", action="store_true", help="and restore it from the checkpoint at once")
    p.add_argument("--allow-privileged", action="store_true",
                   help="accept a container with privileges, host namespaces or devices")
    p.add_argument("--ignore-cpu", action="store_true", help="import even if this CPU lacks features of the "
                   "exporting host's")
    p.add_argument("file", metavar="FILE")
    p.set_defaults(func=cmd_checkpoint, checkpoint_dir=None)
    p = csub.add_parser("diff", parents=[common], help="what changed from one checkpoint to another: processes, "
                        "memory, files of the writable layer")
    p.add_argument("--checkpoint-dir", metavar="DIR", help=dir_help)
    p.add_argument("container")
    p.add_argument("name")
    p.add_argument("other")
    p.set_defaults(func=cmd_checkpoint)
    p = csub.add_parser("rm", parents=[common], help="remove a checkpoint")
    p.add_argument("--checkpoint-dir", metavar="DIR", help=dir_help)
    p.add_argument("container")
    p.add_argument("name")
    p.set_defaults(func=cmd_checkpoint)

    p = sub.add_parser("bench", parents=[common], help="benchmark cmigrate against the alternatives on the lab")
    p.add_argument("--sizes", default="64,256,1024", help="memhog sizes in MiB (default 64,256,1024)")
    p.add_argument("--dirty", default="0,10,100", help="memhog dirty rates in MB/s (default 0,10,100)")
    p.add_argument("--procs", default="", help="also forest workloads of these process counts, e.g. 1,10,50,200 "
                   "(default none)")
    p.add_argument("--repeats", type=int, default=5, help="runs of each method per workload (default 5)")
    p.add_argument("--methods", default="cmigrate,postcopy,keepip,keepip-postcopy,naive,raw",
                   help="methods to compare (default: the migrations: %(default)s; clone,cold: a warm server "
                        "started from a clone of its checkpoint against a cold start)")
    p.add_argument("--no-counter", action="store_true", help="skip the seed's counter container")
    p.add_argument("--db", default="", metavar="MIB[,MIB]", help="also the database-like workload: Redis holding "
                   "about MIB MiB of text keys and values (customers, orders, sessions), e.g. 84 (default none)")
    p.add_argument("--link", metavar="RATE[,DELAY]", action="append", default=[],
                   help="shape hostB's link for the run, e.g. 1gbit, or 100mbit,1ms: the rate with tc's tbf, a "
                   "delay (each way) with netem, or where the kernel has none the lab's delay line; removed after "
                   "it. Repeatable: every workload runs on each link in turn ('none': the lab's link as it is)")
    p.add_argument("--link-sizes", default=None, metavar="MIB[,MIB]", help="the memhog sizes on shaped links "
                   "(default: --sizes)")
    p.add_argument("--fleet", action="store_true", help="the fleet benchmark instead: evacuate counters and 4 x 256 "
                   "MiB memhogs from hostA to hostB,hostC, --parallel 1 against the default (three-host lab)")
    p.add_argument("--fleet-counters", type=int, default=20, metavar="N", help="--fleet: counters (default 20)")
    p.add_argument("--out", default="bench-out", help="output directory (default bench-out)")
    p.set_defaults(func=cmd_bench)

    from migrate.fleet import DEFAULT_PARALLEL
    fleet = argparse.ArgumentParser(add_help=False)
    fleet.add_argument("--parallel", type=int, default=DEFAULT_PARALLEL, metavar="N",
                       help=f"at most N moves at a time (default {DEFAULT_PARALLEL})")
    fleet.add_argument("--filter", action="append", default=[], metavar="FILTER",
                       help="only containers with label=KEY, label=KEY=VALUE or name=PATTERN (repeatable: all must "
                            "match)")
    fleet.add_argument("--dry-run", action="store_true", help="show the plan; move nothing")
    fleet.add_argument("--mode", default="auto", choices=("auto", "stop-copy", "pre-copy", "post-copy"),
                       help="each move's mode (as cmigrate migrate --mode; default auto)")
    fleet.add_argument("--data-path", default="auto", choices=("auto", "direct", "relay"),
                       help="each move's data path (as cmigrate migrate --data-path)")
    fleet.add_argument("--io-timeout", type=_seconds, default=DEFAULT_IO_TIMEOUT, metavar="SECONDS",
                       help="count a host silent this long as lost (default 120)")
    fleet.add_argument("--allow-privileged", action="store_true", help="as cmigrate migrate --allow-privileged")
    fleet.add_argument("--tcp-close", action="store_true", help="as cmigrate migrate --tcp-close")
    fleet.add_argument("--ignore-cpu", action="store_true", help="as cmigrate migrate --ignore-cpu")
    p = sub.add_parser("evacuate", parents=[common, fleet],
                       help="move every running container off HOST to other hosts, a few at a time")
    p.add_argument("host_name", metavar="HOST", help="the host to empty")
    p.add_argument("containers", nargs="*", metavar="CONTAINER", help="only these (default: every running one)")
    p.add_argument("--to", required=True, metavar="HOST2[,HOST3...]", help="the hosts they may go to")
    p.set_defaults(func=cmd_evacuate)
    p = sub.add_parser("balance", parents=[common, fleet],
                       help="move the fewest containers that even out the hosts' memory use (or container count)")
    p.add_argument("hosts", nargs="+", metavar="HOST")
    p.add_argument("--by", default="memory", choices=("memory", "count"),
                   help="a host's load: its containers' memory (default) or their number")
    p.add_argument("--spread", type=float, default=10.0, metavar="PCT",
                   help="balanced when the most and least loaded hosts differ by at most PCT %% of the mean load "
                        "(default 10)")
    p.add_argument("--max-use", type=float, metavar="PCT",
                   help="and no host's containers use more than PCT %% of its memory")
    p.set_defaults(func=cmd_balance)

    p = sub.add_parser("recover", parents=[common],
                       help="finish or roll back migrations from HOST whose cmigrate was interrupted")
    p.add_argument("host_name", metavar="HOST", help="the source host of the interrupted migration(s)")
    p.add_argument("container", nargs="?", help="only this container's")
    p.add_argument("--io-timeout", type=_seconds, default=DEFAULT_IO_TIMEOUT, metavar="SECONDS",
                   help="count a host that answers nothing for this long as unreachable (default 120)")
    p.set_defaults(func=cmd_recover)

    p = sub.add_parser("start", parents=[common], help="start a stopped container from a checkpoint")
    p.add_argument("--checkpoint", required=True, metavar="NAME", help="restore from this checkpoint")
    p.add_argument("--name", metavar="NEW", help="start a new container NEW from the checkpoint (a clone; "
                   "connections closed, published ports left out) and leave CONTAINER as it is")
    p.add_argument("--checkpoint-dir", metavar="DIR", help=dir_help)
    p.add_argument("--all", action="store_true", help="start every stopped container of the host that has the "
                   "checkpoint (after checkpoint create --all); one that fails does not stop the others")
    p.add_argument("container", nargs="?")
    p.set_defaults(func=cmd_start)
    return parser


class Bars:
    """tqdm progress bars for the library's progress events (bytes, rate, ETA), one per transfer."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bars: dict = {}

    def __call__(self, event: dict) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm
        kind = event.get("event")
        if kind == "transfer":
            self.bars[event["what"]] = tqdm(total=event.get("total") or None, unit="B", unit_scale=True,
                                            unit_divisor=1024, desc=event["what"], file=sys.stderr, leave=False)
        elif kind == "bytes" and event["what"] in self.bars:
            self.bars[event["what"]].update(event["bytes"])
        elif kind == "transfer-done" and event["what"] in self.bars:
            self.bars.pop(event["what"]).close()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def build_migrate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cmigrate", parents=[_common(sub=False)],
        usage="cmigrate [options] [migrate] CONTAINER SOURCE DESTINATION\n       cmigrate COMMAND ...",
        description="Live-migrate the running CONTAINER from host SOURCE to host DESTINATION. Hosts are 'local' "
                    "or SSH host names. Other commands: see cmigrate --help.")
    p.add_argument("--version", action="version", version=f"cmigrate {__version__}")
    p.add_argument("container", metavar="CONTAINER")
    p.add_argument("source", metavar="SOURCE", help="the host the container runs on")
    p.add_argument("destination", metavar="DESTINATION", help="the host it goes to")
    p.add_argument("--mode", default="auto", choices=("auto", "stop-copy", "pre-copy", "post-copy"),
                   help="how memory moves: stop-copy (all of it while frozen), post-copy (run on DESTINATION at "
                        "once, fetch memory afterwards), pre-copy (needs soft-dirty tracking); default auto: "
                        "pre-copy where both kernels allow it, else stop-copy (never post-copy)")
    p.add_argument("--level", type=int, default=3, help="zstd compression level 1..19 (default 3)")
    p.add_argument("--threads", type=int, default=-1, help="zstd threads (default: all cores)")
    p.add_argument("--allow-privileged", action="store_true",
                   help="let DESTINATION apply settings that give the container that host (privileged, devices, "
                        "binds of / or system paths, host-root capabilities); refused by default, since SOURCE "
                        "sends them")
    p.add_argument("--keep-source", action="store_true",
                   help="leave the source container stopped with its checkpoint instead of removing it")
    p.add_argument("--keep-ip", action="store_true",
                   help="keep the container's IP and MAC address, and its TCP connections, on DESTINATION (a network "
                        "of the same name and subnet on one layer-2 segment: macvlan, ipvlan)")
    p.add_argument("--tcp-close", action="store_true",
                   help="move a container that holds TCP connections by closing them: they end when the source lets "
                        "go, and clients reconnect to its new address (without it, such a container is refused)")
    p.add_argument("--ignore-cpu", action="store_true",
                   help="move it even where DESTINATION's CPU lacks features SOURCE's has (refused by default, "
                        "naming them: a process using them would die of SIGILL there)")
    p.add_argument("--io-timeout", type=_seconds, default=DEFAULT_IO_TIMEOUT, metavar="SECONDS",
                   help="give up when a host sends nothing for this long during a transfer (default 120)")
    p.add_argument("--stream-pages", default="auto", choices=("auto", "always", "never"),
                   help="stop-copy over the direct link: memory pages straight from the dump into the link "
                        "(always), or dumped to disk and sent after (never); auto: from 64 MiB of memory")
    p.add_argument("--page-compression", default="auto", choices=("auto", "off"),
                   help="streamed memory pages: zstd where a chunk shrinks, raw where it does not (auto), or all "
                        "raw (off)")
    from migrate.migration import PrecopyRule
    rule = PrecopyRule()
    p.add_argument("--precopy-iterations", type=int, default=rule.max_iterations, metavar="N",
                   help=f"pre-copy: at most N pre-dumps before the freeze (default {rule.max_iterations})")
    p.add_argument("--precopy-min-pages", type=int, default=rule.min_pages, metavar="PAGES",
                   help="pre-copy: freeze once a pre-dump writes fewer pages than this (default "
                        f"{rule.min_pages}, 4 KiB each)")
    p.add_argument("--precopy-shrink", type=float, default=rule.shrink, metavar="RATIO",
                   help="pre-copy: freeze once a pre-dump writes more than RATIO x the pages of the one before "
                        f"(not shrinking; default {rule.shrink:g})")
    p.add_argument("--data-path", default="auto", choices=("auto", "direct", "relay"),
                   help="direct: SOURCE sends to DESTINATION over its own ssh (it must reach DESTINATION by that "
                        "name); relay: through this machine; auto (default): relay below 16 MiB to carry, else direct "
                        "if it works, else relay")
    return p


def cmd_migrate(args: argparse.Namespace) -> int:
    from migrate.migration import PrecopyRule, migrate
    if args.mode == "post-copy":
        from migrate.migration import POST_COPY_RISK
        print("cmigrate: warning: " + POST_COPY_RISK.format(src=args.source, dst=args.destination),
              file=sys.stderr)
    bars = Bars(not args.quiet and not args.json and sys.stderr.isatty())
    try:
        report = migrate(args.container, args.source, args.destination, ssh_config=args.ssh_config,
                         mode=args.mode, level=args.level, threads=args.threads, keep_source=args.keep_source,
                         io_timeout=args.io_timeout, progress=bars, data_path=args.data_path,
                         precopy=PrecopyRule(args.precopy_iterations, args.precopy_min_pages, args.precopy_shrink),
                         stream_pages=args.stream_pages, page_compression=args.page_compression,
                         allow_privileged=args.allow_privileged,
                         tcp_close=args.tcp_close, keep_ip=args.keep_ip, ignore_cpu=args.ignore_cpu)
    finally:
        bars.close()
    if args.json:
        print(report.to_json())
    elif not args.quiet:
        print(report.human())
    for warning in report.warnings:
        print(f"cmigrate: warning: {warning}", file=sys.stderr)
    return 0


def _grammar(*parsers: argparse.ArgumentParser) -> tuple[set[str], tuple[str, ...]]:
    """What argparse itself knows, for the one decision it cannot make (is the first word a command or a
    container?): the options that take a value, in every parser and subcommand, and the command names."""
    takes_value, commands, todo = set(), (), list(parsers)
    while todo:
        parser = todo.pop()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                commands = commands or tuple(action.choices)
                todo.extend(action.choices.values())
            elif action.option_strings and action.nargs != 0:
                takes_value.update(action.option_strings)
    return takes_value, commands


def _positionals(argv: list[str], takes_value: set[str]) -> list[tuple[int, str]]:
    """The words that are not options or option values, with their places."""
    out, skip = [], False
    for i, word in enumerate(argv):
        if skip:
            skip = False
        elif word == "--":
            continue
        elif word.startswith("-"):
            skip = word in takes_value
        else:
            out.append((i, word))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, migrate_parser = build_parser(), build_migrate_parser()
    takes_value, commands = _grammar(parser, migrate_parser)
    places = _positionals(argv, takes_value)
    explicit = bool(places) and places[0][1] == "migrate"   # 'cmigrate migrate C SRC DST': any name at all
    if explicit:
        del argv[places[0][0]]
    # a first word that is no command is a container: 'cmigrate cr' is a migration missing its two hosts
    if explicit or (places and places[0][1] not in commands):
        args = migrate_parser.parse_args(argv)
        args.func = cmd_migrate
        return _dispatch(args)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_usage(sys.stderr)
        return 2
    return _dispatch(args)


def _dispatch(args: argparse.Namespace) -> int:
    try:
        return args.func(args)
    except MigrationError as exc:
        if getattr(args, "json", False):
            print(json.dumps(exc.to_dict()))
        print(f"cmigrate: error: {exc.line()}", file=sys.stderr)
        if exc.detail:
            print("  " + printable(exc.detail).replace("\n", "\n  "), file=sys.stderr)
        return 2 if isinstance(exc, UsageError) else 130 if isinstance(exc, Interrupted) else 1
    except KeyboardInterrupt:
        print("cmigrate: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
