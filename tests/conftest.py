"""Shared fixtures: keep the developer's own SSH config, agent and Docker settings out of every test."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    for var in ("SSH_AUTH_SOCK", "DOCKER_HOST", "DOCKER_CONFIG", "DOCKER_CONTEXT", "CMIGRATE_SSH_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    yield home
