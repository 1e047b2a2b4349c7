"""Names users give are checked whole: ``re.match`` with ``$`` let a trailing newline through."""
from __future__ import annotations

import pytest

from migrate.errors import UsageError
from migrate.names import validate_checkpoint, validate_container, validate_host, validate_timeout


@pytest.mark.parametrize("check,value", [(validate_container, "cr\n"), (validate_checkpoint, "c1\n"),
                                         (validate_host, "hostB\n"), (validate_container, "a b"),
                                         (validate_host, "-oProxyCommand=x"), (validate_checkpoint, "a")])
def test_bad_names_are_refused(check, value):
    with pytest.raises(UsageError):
        check(value)


def test_good_names_pass():
    assert validate_container("/web-1.a_b") == "web-1.a_b"
    assert validate_checkpoint("c1") == "c1" and validate_host("user@[::1]") == "user@[::1]"


@pytest.mark.parametrize("value", [0, -1, float("nan"), float("inf"), "5"])
def test_io_timeout_must_be_positive_seconds(value):
    with pytest.raises(UsageError):
        validate_timeout(value)
