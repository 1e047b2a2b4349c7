"""Files in directories everyone can write to (/tmp) are read by root only when they are root's regular files:
a FIFO planted where the agent looks for containerd's leaked checkpoint copies once hung the destination agent."""
from __future__ import annotations

import os
import threading

from agents import checkpoint


def test_a_planted_fifo_does_not_hang_the_cleanup(tmp_path, monkeypatch):
    monkeypatch.setenv("CMIGRATE_CONTAINERD_TMP", str(tmp_path))
    planted = tmp_path / "ctrd-checkpoint-123"
    planted.mkdir()
    os.mkfifo(planted / "cmigrate-nonce")
    done = threading.Event()
    t = threading.Thread(target=lambda: (checkpoint._remove_containerd_copy("cmigrate-x"), done.set()), daemon=True)
    t.start()
    assert done.wait(5), "the agent blocked opening a FIFO"
    assert planted.exists()


def test_a_symlink_or_foreign_file_is_not_followed(tmp_path, monkeypatch):
    monkeypatch.setenv("CMIGRATE_CONTAINERD_TMP", str(tmp_path))
    target = tmp_path / "secret"
    target.write_text("cmigrate-x")
    planted = tmp_path / "ctrd-checkpoint-456"
    planted.mkdir()
    (planted / "cmigrate-nonce").symlink_to(target)
    checkpoint._remove_containerd_copy("cmigrate-x")
    assert planted.exists(), "a symlinked nonce must not count as ours"
    foreign = tmp_path / "ctrd-checkpoint-789"
    foreign.mkdir()
    (foreign / "cmigrate-nonce").write_text("cmigrate-x")
    os.chown(foreign / "cmigrate-nonce", 65534, 65534)
    checkpoint._remove_containerd_copy("cmigrate-x")
    assert foreign.exists(), "a nonce file of another user's must not count as ours"


def test_ours_is_removed(tmp_path, monkeypatch):
    monkeypatch.setenv("CMIGRATE_CONTAINERD_TMP", str(tmp_path))
    ours = tmp_path / "ctrd-checkpoint-1"
    ours.mkdir()
    (ours / "cmigrate-nonce").write_text("cmigrate-x")
    checkpoint._remove_containerd_copy("cmigrate-x")
    assert not ours.exists()
