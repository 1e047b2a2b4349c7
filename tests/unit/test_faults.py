"""CMIGRATE_FAULT: what the fault matrix (tests/faults) relies on to inject faults at phase boundaries."""
from __future__ import annotations

import pytest

from migrate.errors import UsageError
from migrate.faults import Injector, parse


def test_plan_is_action_at_point():
    assert parse("kill-cli@frozen, hook@transfer") == {"frozen": "kill-cli", "transfer": "hook"}
    assert parse("") == {}


@pytest.mark.parametrize("spec", ["kill-cli", "kill-cli@nowhere", "rm-rf@frozen", "hook@frozen@x"])
def test_a_bad_plan_is_refused_in_one_line(spec):
    with pytest.raises(UsageError, match="CMIGRATE_FAULT"):
        parse(spec)


def test_hook_runs_once_with_the_migration_in_its_environment(tmp_path):
    out = tmp_path / "hook.out"
    inject = Injector({"CMIGRATE_FAULT": "hook@restored",
                       "CMIGRATE_FAULT_HOOK": f"sh -c 'echo $CMIGRATE_FAULT_POINT $CMIGRATE_SRC_AGENT_PID >> {out}'"})
    inject.context = {"CMIGRATE_SRC_AGENT_PID": "4242"}
    inject("frozen")       # not planned there: nothing happens
    inject("restored")
    inject("restored")     # once per migration
    assert out.read_text() == "restored 4242\n"
    assert inject.plan == {}


def test_a_hook_needs_a_command():
    with pytest.raises(UsageError, match="CMIGRATE_FAULT_HOOK"):
        Injector({"CMIGRATE_FAULT": "hook@frozen"})


def test_int_cli_is_a_real_sigint():
    inject = Injector({"CMIGRATE_FAULT": "int-cli@prepared"})
    with pytest.raises(KeyboardInterrupt):
        inject("prepared")
