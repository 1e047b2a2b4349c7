"""The preflight names a container's TCP connections from the kernel's tables: only sockets its processes hold,
not listeners, with both addresses as a user would write them."""
from __future__ import annotations

import os
import socket

from agents import connections

TABLE = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1B58 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0 100 0 0 10 0
   1: 0200A8C0:1B58 0900A8C0:9D38 01 00000000:00000000 00:00000000 00000000     0        0 1002 1 0 20 4 30 10 -1
   2: 0200A8C0:1B58 0900A8C0:9D39 06 00000000:00000000 03:00000000 00000000     0        0 0 3 0 0 0 0 0 0
"""
TABLE6 = """  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0000000000000000FFFF00000200A8C0:1B58 0000000000000000FFFF00000900A8C0:9D3A 01 00000000:00000000 00:00000000 00000000     0        0 1003 1 0
   1: B80D0120000000000000000001000000:0050 B80D0120000000000000000002000000:C350 08 00000000:00000000 00:00000000 00000000     0        0 1004 1 0
"""


def test_tables_give_connections_with_readable_addresses():
    assert connections.parse_table(TABLE) == {1002: ("192.168.0.2:7000", "192.168.0.9:40248", "established")}
    assert connections.parse_table(TABLE6) == {
        1003: ("192.168.0.2:7000", "192.168.0.9:40250", "established"),   # v4-mapped, shown as v4
        1004: ("[2001:db8::1]:80", "[2001:db8::2]:50000", "close-wait")}


def test_a_real_connection_of_this_process_is_found_and_its_listener_is_not():
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    try:
        found = connections.tcp_connections(os.getpid())
        mine = [c for c in found if f":{port}" in c["local"] or f":{port}" in c["peer"]]
        here = f"127.0.0.1:{client.getsockname()[1]}"
        assert sorted((c["local"], c["peer"]) for c in mine) == sorted(
            [(f"127.0.0.1:{port}", here), (here, f"127.0.0.1:{port}")])
        assert all(c["state"] == "established" for c in mine)
    finally:
        for s in (client, accepted, server):
            s.close()
    assert not [c for c in connections.tcp_connections(os.getpid()) if c["local"] == f"127.0.0.1:{port}"
                and c["state"] == "established"]
