"""The CLI's grammar as a newcomer meets it: the main job is in --help, and a migration missing its hosts says so."""
from __future__ import annotations

import subprocess
import sys


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "migrate.cli", *args], capture_output=True, text=True, timeout=60)


def test_help_shows_the_main_job():
    out = cli("--help").stdout
    assert "cmigrate [migrate] CONTAINER SOURCE DESTINATION" in out.replace("\n", " ")


def test_a_container_without_hosts_is_told_which_are_missing():
    res = cli("cr")
    assert res.returncode == 2 and "required: SOURCE, DESTINATION" in res.stderr, res.stderr
    res = cli("cr", "hostA")
    assert res.returncode == 2 and "required: DESTINATION" in res.stderr, res.stderr


def test_commands_still_parse_as_commands():
    res = cli("lab", "bogus")
    assert res.returncode == 2 and "invalid choice: 'bogus'" in res.stderr


def test_fleet_commands_refuse_bad_input_in_one_line_before_touching_a_host():
    for argv, said in [
        (["evacuate", "hostA"], "required: --to"),
        (["evacuate", "hostA", "--to", "hostB,hostA"], "cannot be a target too"),
        (["evacuate", "hostA", "--to", "hostB", "--parallel", "0"], "--parallel 0: choose 1..16"),
        (["evacuate", "hostA", "--to", "hostB", "--filter", "tier=web"], "filter 'tier=web'"),
        (["balance", "hostA"], "at least two hosts"),
        (["balance", "hostA", "hostB", "--spread", "-1"], "--spread -1"),
        (["balance", "hostA", "hostB", "--max-use", "150"], "--max-use 150"),
        (["lab", "status", "--hosts", "3"], "--hosts goes with lab up"),
    ]:
        res = cli(*argv)
        assert res.returncode == 2 and said in res.stderr, (argv, res.stderr)
        assert len([ln for ln in res.stderr.splitlines() if "error" in ln]) == 1, res.stderr


def test_the_grammar_comes_from_argparse_alone():
    from migrate import cli
    takes_value, commands = cli._grammar(cli.build_parser(), cli.build_migrate_parser())
    assert set(commands) == {"lab", "checkpoint", "start", "bench", "recover", "evacuate", "balance"}
    assert {"-H", "--host", "-F", "--mode", "--io-timeout", "--checkpoint-dir", "--precopy-shrink"} <= takes_value
    assert not {"--json", "-q", "--keep-source", "--allow-privileged", "--leave-running"} & takes_value
    argv = ["--mode", "post-copy", "-H", "x", "--json", "cr", "hostA", "hostB"]
    assert [w for _, w in cli._positionals(argv, takes_value)] == ["cr", "hostA", "hostB"]


def test_whole_host_and_file_commands_say_what_they_take():
    for argv, said in [
        (["checkpoint", "create", "--all", "cr", "boot"], "checkpoint create --all takes one name"),
        (["checkpoint", "create", "cr"], "checkpoint create needs CONTAINER NAME"),
        (["start", "--checkpoint", "boot", "--all", "cr"], "start --checkpoint NAME --all takes no container"),
        (["start", "--checkpoint", "boot"], "start needs a CONTAINER"),
        (["checkpoint", "inspect", "cr"], "checkpoint inspect needs CONTAINER NAME, or --file FILE"),
        (["checkpoint", "inspect", "--file", "/x", "cr", "c1"], "not both"),
        (["checkpoint", "export", "cr", "c1"], "the following arguments are required: -o/--output"),
    ]:
        res = cli(*argv)
        assert res.returncode == 2 and said in res.stderr.strip().splitlines()[-1], (argv, res.stderr)


def test_a_file_that_is_no_checkpoint_is_refused_before_any_host_is_asked(tmp_path):
    junk = tmp_path / "junk.ckpt"
    junk.write_text("not a checkpoint")
    res = cli("-H", "nosuchhost.invalid", "checkpoint", "import", str(junk))
    assert res.returncode == 1 and "not a cmigrate checkpoint file" in res.stderr, res.stderr
    res = cli("checkpoint", "import", str(tmp_path / "missing.ckpt"))
    assert res.returncode == 1 and "cannot read" in res.stderr, res.stderr


def test_bench_refuses_a_link_it_cannot_shape_before_touching_the_lab():
    for argv, said in [(["bench", "--link", "fast"], "--link 'fast'"),
                       (["bench", "--link", "100mbit,soon"], "--link '100mbit,soon'"),
                       (["bench", "--db", "0"], "--db: sizes from 1")]:
        res = cli(*argv)
        assert res.returncode == 2 and said in res.stderr, (argv, res.stderr)
