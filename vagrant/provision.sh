#!/bin/bash
# provision.sh NAME: make this VM a cmigrate lab host (run as root by Vagrant, with the source tree at /cmigrate).
#   - the project's own installer (the README's), unchanged;
#   - Docker in experimental mode with the cmigrate-runc runtime; the lab's test image (busybox + memhog);
#   - SSH: the lab's host key, root reachable with the lab's key, the other hosts known by name and key.
# CMIGRATE_LAB_HOSTS="hostA=192.168.56.11 hostB=192.168.56.12" names them all.
set -euo pipefail
name=${1:?usage: provision.sh NAME}
src=/cmigrate
keys=$src/vagrant/.keys
say() { printf 'provision %s: %s\n' "$name" "$*"; }

say "running ./install.sh"
"$src/install.sh"

say "Docker: experimental mode, runtime cmigrate-runc"
mkdir -p /etc/docker
cat > /etc/docker/daemon.json <<JSON
{
  "experimental": true,
  "runtimes": { "cmigrate-runc": { "path": "/usr/local/bin/cmigrate-runc" } }
}
JSON
systemctl restart docker
docker info --format '{{.ExperimentalBuild}} {{range $k, $v := .Runtimes}}{{$k}} {{end}}'

say "test image busybox:latest (busybox-static + memhog), as in the netns lab"
"$src/.venv/bin/python" -c 'import sys; from migrate import lab; sys.stdout.buffer.write(lab.busybox_rootfs_tar())' |
    docker import --change 'CMD ["sh"]' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' - busybox:latest

say "SSH: host key, root's key, known hosts"
install -m 0600 "$keys/host_$name" /etc/ssh/ssh_host_ed25519_key
install -m 0644 "$keys/host_$name.pub" /etc/ssh/ssh_host_ed25519_key.pub
install -d -m 0700 /root/.ssh
install -m 0600 "$keys/id_ed25519" /root/.ssh/id_ed25519
install -m 0644 "$keys/id_ed25519.pub" /root/.ssh/id_ed25519.pub
touch /root/.ssh/authorized_keys
grep -qxF "$(cat "$keys/id_ed25519.pub")" /root/.ssh/authorized_keys ||
    cat "$keys/id_ed25519.pub" >> /root/.ssh/authorized_keys
chmod 600 /root/.ssh/authorized_keys
install -m 0644 "$keys/known_hosts" /root/.ssh/known_hosts
: > /root/.ssh/config
for pair in ${CMIGRATE_LAB_HOSTS:?}; do
    printf 'Host %s\n  HostName %s\n  User root\n  StrictHostKeyChecking yes\n\n' "${pair%%=*}" "${pair#*=}" \
        >> /root/.ssh/config
done
chmod 600 /root/.ssh/config
systemctl reload ssh

say "kernel: $(uname -r); $(criu check --feature mem_dirty_track >/dev/null 2>&1 && echo soft-dirty yes ||
    echo soft-dirty NO); $(criu check --feature uffd-noncoop >/dev/null 2>&1 && echo userfaultfd yes ||
    echo userfaultfd NO)"
