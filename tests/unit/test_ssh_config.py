"""Host resolution through an OpenSSH config, as ``ssh`` itself would resolve it."""
from __future__ import annotations

import pytest

from migrate.errors import TransportError
from transport.ssh import _parse_jump, resolve


def test_resolves_hostname_user_port_identity_and_known_hosts(tmp_path):
    cfg = tmp_path / "config"
    cfg.write_text("Host web1\n  HostName 198.18.5.5\n  User deploy\n  Port 2222\n"
                   "  IdentityFile ~/.ssh/id_web\n  UserKnownHostsFile /tmp/kh1 /tmp/kh2\n  ProxyJump bastion\n")
    spec = resolve("web1", str(cfg))
    assert (spec.hostname, spec.user, spec.port) == ("198.18.5.5", "deploy", 2222)
    assert spec.identity_files[0].endswith("/.ssh/id_web") and "~" not in spec.identity_files[0]
    assert spec.known_hosts_files == ["/tmp/kh1", "/tmp/kh2"]
    assert spec.proxy_jump == "bastion"


def test_unlisted_host_keeps_its_name_and_default_known_hosts(tmp_path, isolated_env):
    spec = resolve("plainhost", None)
    assert spec.hostname == "plainhost" and spec.port == 22 and spec.proxy_jump is None
    assert spec.known_hosts_files[0] == str(isolated_env / ".ssh" / "known_hosts")


def test_missing_explicit_config_is_an_error(tmp_path):
    with pytest.raises(TransportError, match="does not exist"):
        resolve("x", str(tmp_path / "nope"))


@pytest.mark.parametrize("jump,expected", [
    ("bastion", ("bastion", None, None)),
    ("ops@bastion:2200", ("bastion", "ops", 2200)),
    ("[fe80::1]:22", ("fe80::1", None, 22)),
])
def test_proxy_jump_forms(jump, expected):
    assert _parse_jump(jump) == expected


@pytest.mark.parametrize("jump,expected", [
    ("ssh://u@h:2222", ("h", "u", 2222)),
    ("ssh://h", ("h", None, None)),
    ("ssh://u@[::1]:2200", ("::1", "u", 2200)),
])
def test_proxy_jump_uri_form(jump, expected):
    assert _parse_jump(jump) == expected


@pytest.mark.parametrize("jump", ["h:ssh", "h:0", "h:70000", "[::1]:x", "u@", "ssh://"])
def test_bad_proxy_jump_is_a_one_line_error(jump):
    with pytest.raises(TransportError) as exc:
        _parse_jump(jump)
    assert "\n" not in exc.value.line()


@pytest.mark.parametrize("port", ["ssh", "0", "99999"])
def test_bad_port_is_a_one_line_error(tmp_path, port):
    config = tmp_path / "config"
    config.write_text(f"Host web\n    Port {port}\n")
    with pytest.raises(TransportError, match="Port of web in the SSH config is .* not a port number"):
        resolve("web", str(config))
