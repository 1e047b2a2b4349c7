#!/usr/bin/env bash
# Set everything up and run the main job in the local two-host lab: the seed document's counter container is
# started on hostA and live-migrated to hostB, where it keeps counting from where it was. The lab stays up
# afterwards (tear it down with: .venv/bin/cmigrate lab down). Then a server on the network both hosts share moves
# there and back with --keep-ip while a client on the segment stays connected, printing what it receives.
set -euo pipefail
cd "$(dirname "$0")"
./install.sh
cmigrate=.venv/bin/cmigrate
$cmigrate lab up
docker_on() { ssh -F /var/lib/cmigrate-lab/ssh_config "$1" /usr/bin/docker "${@:2}"; }
for h in hostA hostB; do docker_on "$h" rm -f cr >/dev/null 2>&1 || true; done

echo "== hostA: the seed's counter container 'cr'"
docker_on hostA run --security-opt=seccomp:unconfined --name cr -d busybox /bin/sh -c \
    "'i=0; while true; do echo \$i; i=\$(expr \$i + 1); sleep 1; done'" >/dev/null
sleep 3
echo "   hostA counted: $(docker_on hostA logs cr | tr '\n' ' ')"
echo "== cmigrate cr hostA hostB"
$cmigrate cr hostA hostB
sleep 2
echo "   hostB goes on: $(docker_on hostB logs cr | tr '\n' ' ')"
echo "   hostA has:     $(docker_on hostA ps -a --filter name=cr --format '{{.Names}}' | wc -l) container(s) named cr"
echo "== and back: cmigrate cr hostB hostA"
$cmigrate cr hostB hostA | grep downtime
sleep 1
echo "   hostA goes on: $(docker_on hostA logs cr | tr '\n' ' ')"
docker_on hostA rm -f cr >/dev/null

echo "== --keep-ip: a server on the shared network, a client on the segment connected through both moves"
for h in hostA hostB; do docker_on "$h" rm -f srv >/dev/null 2>&1 || true; done
docker_on hostA run -d --name srv --network cmshared busybox sh -c \
    "'i=0; while true; do echo tick \$i; i=\$(expr \$i + 1); sleep 0.5; done | nc -l -p 7000'" >/dev/null
ip=$(docker_on hostA inspect -f '{{.NetworkSettings.Networks.cmshared.IPAddress}}' srv)
# its first packet: the bridge may still send its MAC (derived from the address) to where an earlier srv moved
docker_on hostA exec srv ping -c 1 -W 2 198.18.0.1 >/dev/null
sleep 1
# the client: a machine on the segment (the lab's cmlab-client namespace), printing each line it receives
nsenter --net=/run/netns/cmlab-client python3 -c '
import socket, sys
for line in socket.create_connection((sys.argv[1], 7000)).makefile():
    print("   client got:", line.strip(), flush=True)' "$ip" &
client=$!
sleep 2
$cmigrate --keep-ip srv hostA hostB | grep -E 'migrated|downtime'
sleep 2
$cmigrate --keep-ip srv hostB hostA | grep -E 'migrated|downtime'
sleep 2
kill "$client" 2>/dev/null || true
docker_on hostA rm -f srv >/dev/null
