#!/bin/sh
# ssh-config.sh: an SSH config for cmigrate on the machine that runs Vagrant, from the running lab VMs:
#   ./ssh-config.sh > ssh_config && cmigrate -F ssh_config cr hostA hostB
# root on each host (the agents need it), the lab's key, host keys pinned from .keys/known_hosts.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
keys=$here/.keys
[ -f "$keys/known_hosts" ] || { echo "ssh-config.sh: no lab keys in $keys: run 'vagrant up' first" >&2; exit 1; }
running=$(cd "$here" && vagrant status --machine-readable | awk -F, '$3 == "state" && $4 == "running" {print $2}')
for name in hostA hostB; do
    echo "$running" | grep -qx "$name" || { echo "ssh-config.sh: $name is not running: vagrant up" >&2; exit 1; }
    address=$(awk -v n="$name" -F'[ ,]' '$1 == n {print $2; exit}' "$keys/known_hosts")
    printf 'Host %s\n  HostName %s\n  User root\n  IdentityFile %s\n  UserKnownHostsFile %s\n  StrictHostKeyChecking yes\n\n' \
        "$name" "$address" "$keys/id_ed25519" "$keys/known_hosts"
done
