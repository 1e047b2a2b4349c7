#!/usr/bin/env bash
# Set everything up and run the main job in the local two-host lab: the seed document's counter container is
# started on hostA, checkpointed, and restored; its counter resumes where it stopped. The lab stays up afterwards
# (tear it down with: .venv/bin/cmigrate lab down).
set -euo pipefail
cd "$(dirname "$0")"
./install.sh
.venv/bin/cmigrate lab up
ssh_a=(ssh -F /var/lib/cmigrate-lab/ssh_config hostA)
docker=/usr/bin/docker
"${ssh_a[@]}" "$docker" rm -f cr >/dev/null 2>&1 || true
echo "== hostA: docker run the seed's counter container 'cr'"
"${ssh_a[@]}" "$docker" run --security-opt=seccomp:unconfined --name cr -d busybox /bin/sh -c \
    "'i=0; while true; do echo \$i; i=\$(expr \$i + 1); sleep 1; done'"
sleep 3
echo "== hostA: checkpoint cr"
"${ssh_a[@]}" "$docker" checkpoint create cr checkpoint1
echo "   counter so far: $("${ssh_a[@]}" "$docker" logs cr | tr '\n' ' ')"
sleep 2
echo "== hostA: restore cr from checkpoint1"
"${ssh_a[@]}" "$docker" start --checkpoint checkpoint1 cr
sleep 3
echo "   counter now:    $("${ssh_a[@]}" "$docker" logs cr | tr '\n' ' ')"
"${ssh_a[@]}" "$docker" rm -f cr >/dev/null
