#!/usr/bin/env bash
# softdirty-vm.sh: a small Debian 12 VM whose kernel (Debian's 6.1) has soft-dirty tracking, to run what this
# project's CI kernel cannot: pre-copy's iterative pre-dumps. The VM runs the project's own lab inside it.
#
#   vagrant/softdirty-vm.sh test [PYTEST ARGS]   build if needed, boot, install this checkout, lab up, run the
#                                                pre-copy tests (default: tests/lab/test_modes.py -k "pre_copy or
#                                                auto"), power off; exit status: pytest's
#   vagrant/softdirty-vm.sh build | start | ssh [CMD] | stop
#
# On the project's CI machines /dev/kvm is PVM (pagetable-based virtualization, no VMX/SVM): a stock kernel runs
# there ~1000x slower than native, so the VM uses QEMU's TCG emulation by default (ACCEL=tcg; ACCEL=kvm where
# real KVM exists). TCG is slow: fine to show that pre-copy works, not to measure its downtime. The VM boots with
# cgroup v1 like the CI machines (VM_CGROUP_UNIFIED=1 for v2). Files live in $VM_DIR (/var/tmp/cmigrate-vm).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
dir=${VM_DIR:-/var/tmp/cmigrate-vm}
img=$dir/rootfs.img
key=$dir/id_ed25519
pidfile=$dir/qemu.pid
console=$dir/console.log
mnt=$dir/mnt
stamp=$dir/.rootfs-complete
port=${SSH_PORT:-10022}
accel=${ACCEL:-tcg}
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
mirror=${mirror:-http://deb.debian.org/debian}
low=(nice -n 19 ionice -c3)
packages=linux-image-amd64,systemd-sysv,udev,kmod,iproute2,ifupdown,isc-dhcp-client,docker.io,iptables,\
openssh-server,python3,python3-venv,python3-protobuf,libprotobuf-c1,libnl-3-200,libnet1,libcap2,libbsd0,\
libgnutls30,libnftables1,libuuid1,libaio1,busybox-static,procps,ca-certificates

log() { echo "softdirty-vm: $*" >&2; }
running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }
ssh_opts=(-i "$key" -p "$port" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR
          -o ConnectTimeout=5 -o BatchMode=yes)
# shellcheck disable=SC2029  # the commands are meant to run in the VM, as given
vm() { ssh "${ssh_opts[@]}" root@127.0.0.1 "$@"; }

unmount() {
    if mountpoint -q "$mnt"; then umount "$mnt"; fi
}

build() {
    running && { log "the VM is running: not touching its image"; return 0; }
    for tool in debootstrap qemu-system-x86_64 mkfs.ext4; do
        command -v "$tool" >/dev/null || apt-get install -y -qq qemu-system-x86 qemu-utils debootstrap >/dev/null
    done
    mkdir -p "$dir" "$mnt"
    [ -f "$key" ] || ssh-keygen -q -t ed25519 -N '' -C cmigrate-vm -f "$key"
    trap unmount EXIT
    if [ ! -f "$stamp" ]; then
        rm -f "$img"
        truncate -s 8G "$img"
        mkfs.ext4 -q -F "$img"
        mount -o loop "$img" "$mnt"
        log "debootstrap bookworm from $mirror (2-3 minutes)"
        "${low[@]}" debootstrap --arch=amd64 --include="$packages" bookworm "$mnt" "$mirror" > "$dir/debootstrap.log" 2>&1 ||
            { tail -20 "$dir/debootstrap.log"; exit 1; }
        echo cmigrate-vm > "$mnt/etc/hostname"
        printf '127.0.0.1 localhost\n127.0.1.1 cmigrate-vm\n' > "$mnt/etc/hosts"
        echo '/dev/vda / ext4 rw,errors=remount-ro 0 1' > "$mnt/etc/fstab"
        echo "deb $mirror bookworm main" > "$mnt/etc/apt/sources.list"
        printf 'auto lo\niface lo inet loopback\nauto eth0\niface eth0 inet dhcp\n' > "$mnt/etc/network/interfaces"
        chroot "$mnt" systemctl disable docker.service docker.socket containerd.service apt-daily.timer \
            apt-daily-upgrade.timer >/dev/null 2>&1 || true
        touch "$stamp"
    else
        mount -o loop "$img" "$mnt"
    fi
    install -d -m 700 "$mnt/root/.ssh"
    install -m 600 "$key.pub" "$mnt/root/.ssh/authorized_keys"
    # the host's trust anchors (a TLS-inspecting egress proxy, say) and its CRIU build with its stamp (same
    # Debian 12 userland: install.sh in the VM then skips the 1-2 minute build, slow under emulation)
    cp -r /usr/local/share/ca-certificates/. "$mnt/usr/local/share/ca-certificates/"
    chroot "$mnt" update-ca-certificates >/dev/null 2>&1 || true
    for f in sbin/criu lib/cmigrate-criu.build lib/cmigrate-pycriu; do
        if [ -e "/usr/local/$f" ]; then
            mkdir -p "$(dirname "$mnt/usr/local/$f")"
            cp -a "/usr/local/$f" "$mnt/usr/local/$(dirname "$f")/"
        fi
    done
    kver=$(find "$mnt/lib/modules" -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n1)
    grep -q '^CONFIG_MEM_SOFT_DIRTY=y' "$mnt/boot/config-$kver" || { log "kernel $kver has no soft-dirty"; exit 1; }
    cp -f "$mnt/boot/vmlinuz-$kver" "$dir/vmlinuz"
    cp -f "$mnt/boot/initrd.img-$kver" "$dir/initrd.img"
    unmount
    trap - EXIT
    log "image ready: $img (kernel $kver, CONFIG_MEM_SOFT_DIRTY=y)"
}

start() {
    running && return 0
    if [ ! -f "$stamp" ] || [ ! -f "$dir/vmlinuz" ]; then build; fi
    # shellcheck disable=SC2054  # the commas belong to qemu's own option syntax
    local args=(-m "${VM_MEM:-2048}" -smp 1 -kernel "$dir/vmlinuz" -initrd "$dir/initrd.img"
                -append "console=ttyS0 root=/dev/vda rw net.ifnames=0 apparmor=0 systemd.unified_cgroup_hierarchy=${VM_CGROUP_UNIFIED:-0} SYSTEMD_CGROUP_ENABLE_LEGACY_FORCE=1"
                -drive "file=$img,format=raw,if=virtio,cache=writeback"
                -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$port-:22" -device virtio-net-pci,netdev=n0
                -display none -serial "file:$console" -monitor none -no-reboot -daemonize -pidfile "$pidfile")
    if [ "$accel" = kvm ]; then args+=(-enable-kvm -cpu "host,-arch-capabilities"); else args+=(-accel tcg -cpu max); fi
    "${low[@]}" qemu-system-x86_64 "${args[@]}"
    log "booting ($accel); waiting for ssh on port $port"
    for _ in $(seq 1 300); do
        if vm true 2>/dev/null; then log "up"; return 0; fi
        running || { tail -20 "$console"; exit 1; }
        sleep 2
    done
    log "no ssh after 600 s; see $console"
    stop
    exit 1
}

stop() {
    running || { rm -f "$pidfile"; return 0; }
    local pid
    pid=$(cat "$pidfile")
    vm 'systemctl poweroff' 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    if kill -0 "$pid" 2>/dev/null; then kill "$pid"; fi
    rm -f "$pidfile"
    log "stopped"
}

test_in_vm() {
    start
    trap stop EXIT
    log "copying this checkout into the VM and installing it"
    (cd "$repo" && git ls-files -z | tar --null -T - -cf -) | vm 'mkdir -p /root/cmigrate && tar -x -C /root/cmigrate'
    vm 'cd /root/cmigrate && ./install.sh && .venv/bin/cmigrate lab up && .venv/bin/cmigrate lab status'
    local words=()
    if [ $# -eq 0 ]; then set -- tests/lab/test_modes.py -k "pre_copy or auto"; fi
    for a in "$@"; do words+=("$(printf '%q' "$a")"); done
    vm "cd /root/cmigrate && .venv/bin/pytest -v -rs ${words[*]}; rc=\$?; .venv/bin/cmigrate lab down -q; exit \$rc"
}

case "${1:-start}" in
    build) build ;;
    start) start ;;
    stop) stop ;;
    ssh) shift; vm "$@" ;;
    test) shift; test_in_vm "$@" ;;
    *) echo "usage: $0 test [PYTEST ARGS] | build | start | ssh [CMD] | stop" >&2; exit 2 ;;
esac
