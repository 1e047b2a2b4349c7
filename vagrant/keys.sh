#!/bin/sh
# keys.sh NAME=ADDRESS...: the Vagrant lab's SSH keys, made once, on the machine that runs Vagrant.
#   .keys/id_ed25519         root's key on every lab host (hosts reach each other with it; so does cmigrate)
#   .keys/host_NAME          NAME's SSH host key
#   .keys/known_hosts        every host's name and address with its host key
set -eu
dir=$(cd "$(dirname "$0")" && pwd)/.keys
mkdir -p "$dir"
chmod 700 "$dir"
[ -f "$dir/id_ed25519" ] || ssh-keygen -q -t ed25519 -N "" -C cmigrate-vagrant-lab -f "$dir/id_ed25519"
: > "$dir/known_hosts.new"
for pair in "$@"; do
    name=${pair%%=*}
    address=${pair#*=}
    [ -f "$dir/host_$name" ] || ssh-keygen -q -t ed25519 -N "" -C "cmigrate-vagrant-$name" -f "$dir/host_$name"
    printf '%s,%s %s\n' "$name" "$address" "$(cut -d' ' -f1,2 "$dir/host_$name.pub")" >> "$dir/known_hosts.new"
done
mv "$dir/known_hosts.new" "$dir/known_hosts"
