#!/usr/bin/env bash
# softdirty-vm.sh: a small Debian VM whose kernel has soft-dirty tracking (CONFIG_MEM_SOFT_DIRTY), to run what
# this project's CI kernel cannot: pre-copy's iterative pre-dumps. The VM runs the project's own lab inside it.
#
#   vagrant/softdirty-vm.sh test [PYTEST ARGS]   build if needed, boot, install this checkout, lab up, run the
#                                                pre-copy tests (default: tests/lab/test_modes.py -k "pre_copy or
#                                                auto"), power off; exit status: pytest's
#   vagrant/softdirty-vm.sh build | start | install | ssh [CMD] | stop
#                                                (install: copy this checkout into the running VM, ./install.sh)
#
# VM_SUITE picks the Debian release (default bookworm):
#   bookworm  Debian 12, kernel 6.1, Docker 20.10, cgroup v1: the CI machines' userland and cgroup layout, so the
#             default (VM_CGROUP_UNIFIED=1 boots it with cgroup v2)
#   trixie    Debian 13, kernel 6.12, Docker 26 (client: docker-cli), cgroup v2 (unified hierarchy; its systemd
#             257 boots cgroup v1 only when forced: VM_CGROUP_UNIFIED=0)
# Each suite has its own image in $VM_DIR/<suite>/ (VM_DIR: /var/tmp/cmigrate-vm); the SSH key, port and QEMU's
# pid are shared: one VM runs at a time.
#
# The build needs no loop device: debootstrap fills a directory, the checkout is copied in and the project's own
# install.sh runs there natively (chroot in a mount namespace of its own: CRIU is built against that suite's
# libraries, not emulated), then `mkfs.ext4 -d` makes the image from the directory and `e2fsck -fn` checks it
# before QEMU ever opens it (an image that was still mounted on this machine when QEMU opened it once showed the
# VM a 0-byte authorized_keys: nothing is mounted now, a lock keeps a second run from building or booting at the
# same time, and an image on a loop device is refused). The image is then the VM's disk: what the VM installs
# stays. A build is only done when the suite's image is missing (`build` again rebuilds it). The mirror is the one this machine's apt uses
# (/etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list); its apt settings (/etc/apt/apt.conf.d/99*),
# pip settings and CA certificates are copied in.
#
# On the project's CI machines /dev/kvm is PVM (pagetable-based virtualization, no VMX/SVM): a stock kernel runs
# there ~1000x slower than native, so the VM uses QEMU's TCG emulation by default (ACCEL=tcg; ACCEL=kvm where
# real KVM exists). TCG is slow: fine to show that pre-copy works, not to measure its downtime.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
suite=${VM_SUITE:-bookworm}
top=${VM_DIR:-/var/tmp/cmigrate-vm}
dir=$top/$suite
img=$dir/rootfs.img
root=$dir/root
stamp=$dir/.image-complete
key=$top/id_ed25519
pidfile=$top/qemu.pid
running_suite=$top/qemu.suite
console=$top/console.log
port=${SSH_PORT:-10022}
accel=${ACCEL:-tcg}
low=(nice -n 19 ionice -c3)
packages=linux-image-amd64,systemd-sysv,udev,kmod,iproute2,ifupdown,isc-dhcp-client,docker.io,iptables,\
openssh-server,python3,python3-venv,python3-protobuf,libprotobuf-c1,libnl-3-200,libnet1,libcap2,libbsd0,\
libnftables1,libuuid1,busybox-static,procps,ca-certificates
case "$suite" in
    bookworm) packages+=,libgnutls30,libaio1; unified=${VM_CGROUP_UNIFIED:-0} ;;
    trixie) packages+=,libgnutls30t64,libaio1t64,docker-cli; unified=${VM_CGROUP_UNIFIED:-1} ;;
    *) echo "softdirty-vm: VM_SUITE=$suite: choose bookworm or trixie" >&2; exit 2 ;;
esac

log() { echo "softdirty-vm: $*" >&2; }
die() { log "error: $*"; exit 1; }
running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }
ssh_opts=(-i "$key" -p "$port" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR
          -o ConnectTimeout=5 -o BatchMode=yes)
# shellcheck disable=SC2029  # the commands are meant to run in the VM, as given
vm() { ssh "${ssh_opts[@]}" root@127.0.0.1 "$@"; }

# One build or boot at a time in $VM_DIR: a second run (a `build` left running in the background, a command
# retried) must not rebuild, or boot, an image that the first one is still writing.
lock() {
    [ -n "${locked:-}" ] && return 0
    mkdir -p "$top"
    exec 9> "$top/.lock"
    flock -n 9 || die "another $0 is building or booting in $top: wait for it"
    locked=1
}

# QEMU must be the image's only writer. An image still mounted on this machine shows the VM only what was flushed
# (a file written last, root's authorized_keys, has 0 bytes there) and two kernels then write one filesystem.
not_in_use() {
    local loops
    loops=$(losetup -j "$1" 2>/dev/null | cut -d: -f1 | tr '\n' ' ')
    [ -z "$loops" ] || die "$1 is attached to loop device(s) $loops(mounted?): unmount it and detach them first"
}

# This machine's Debian mirror, as install.sh finds it; no other.
apt_mirror() {
    local m
    m=$(awk '/^URIs:/ && !/security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    [ -n "$m" ] || m=$(awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' /etc/apt/sources.list 2>/dev/null || true)
    [ -n "$m" ] || die "no Debian mirror in /etc/apt/sources.list.d/debian.sources (URIs:) or /etc/apt/sources.list: cannot build the VM"
    echo "$m"
}

# Run a shell command in the image's tree: chroot, with proc/sys/dev and a tmpfs /run mounted in a mount
# namespace of its own (private: nothing is mounted on this machine, and all of it is gone when the command ends).
in_root() {
    # shellcheck disable=SC2016  # expanded by that inner shell
    "${low[@]}" unshare --mount --propagation private --fork -- /bin/sh -euc '
        mount -t proc proc "$1/proc"; mount -t sysfs sysfs "$1/sys"; mount --rbind /dev "$1/dev"
        mount -t tmpfs tmpfs "$1/run"; mount -t tmpfs tmpfs "$1/tmp"
        exec env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
            DEBIAN_FRONTEND=noninteractive chroot "$1" /bin/sh -euc "$2"' in_root "$root" "$1"
}

# This checkout's working tree as a tar stream: the files git tracks and the new ones it does not ignore (a file
# being added, that a tracked one already imports), as they are now; files deleted from the tree are left out.
checkout() {
    (cd "$repo" && git ls-files -z --cached --others --exclude-standard |
        tar --null -T - --ignore-failed-read --warning=no-failed-read -cf -)
}

build() {
    running && { log "the VM is running: not touching its image"; return 0; }
    lock
    not_in_use "$img"
    for tool in debootstrap qemu-system-x86_64 mkfs.ext4; do
        command -v "$tool" >/dev/null || apt-get install -y -qq qemu-system-x86 qemu-utils debootstrap >/dev/null
    done
    local mirror kver
    mirror=$(apt_mirror)
    mkdir -p "$dir"
    [ -f "$key" ] || ssh-keygen -q -t ed25519 -N '' -C cmigrate-vm -f "$key"
    rm -f "$stamp" "$img" "$img.new"
    rm -rf "$root"
    log "debootstrap $suite from $mirror into $root (2-4 minutes)"
    "${low[@]}" debootstrap --arch=amd64 --include="$packages" "$suite" "$root" "$mirror" > "$dir/debootstrap.log" 2>&1 ||
        { tail -20 "$dir/debootstrap.log" >&2; die "debootstrap $suite failed; see $dir/debootstrap.log"; }
    echo cmigrate-vm > "$root/etc/hostname"
    printf '127.0.0.1 localhost\n127.0.1.1 cmigrate-vm\n' > "$root/etc/hosts"
    echo '/dev/vda / ext4 rw,errors=remount-ro 0 1' > "$root/etc/fstab"
    rm -f "$root/etc/apt/sources.list"
    printf 'Types: deb\nURIs: %s\nSuites: %s %s-updates\nComponents: main\nSigned-By: %s\n' "$mirror" "$suite" \
        "$suite" /usr/share/keyrings/debian-archive-keyring.gpg > "$root/etc/apt/sources.list.d/debian.sources"
    # this machine's apt settings (without them sid's and trixie's Release files count as expired), pip's, and its
    # trust anchors (a TLS-inspecting egress proxy, say): apt and pip in the VM reach what they reach here
    cp /etc/apt/apt.conf.d/99* "$root/etc/apt/apt.conf.d/" 2>/dev/null || true
    if [ -f /etc/pip.conf ]; then cp /etc/pip.conf "$root/etc/"; fi
    if [ -d /etc/xdg/pip ]; then mkdir -p "$root/etc/xdg" && cp -r /etc/xdg/pip "$root/etc/xdg/"; fi
    if [ -d /usr/local/share/ca-certificates ]; then
        cp -r /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
    fi
    printf 'auto lo\niface lo inet loopback\nauto eth0\niface eth0 inet dhcp\n' > "$root/etc/network/interfaces"
    install -d -m 700 "$root/root/.ssh"
    install -m 600 "$key.pub" "$root/root/.ssh/authorized_keys"
    in_root 'update-ca-certificates >/dev/null 2>&1
             systemctl disable docker.service docker.socket containerd.service apt-daily.timer \
                 apt-daily-upgrade.timer >/dev/null 2>&1 || true'
    # The project's installer, natively in the tree (no daemon is started by a package: policy-rc.d): Debian's
    # packages, CRIU built from source against this suite's libraries (1-2 minutes here, far longer emulated),
    # the virtualenv. In the VM, install.sh then finds all of it in place.
    log "copying this checkout into the tree and running ./install.sh there (3-6 minutes)"
    mkdir -p "$root/root/cmigrate"
    checkout | tar -x -C "$root/root/cmigrate"
    printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
    chmod 755 "$root/usr/sbin/policy-rc.d"
    in_root 'cd /root/cmigrate && ./install.sh' > "$dir/install.log" 2>&1 ||
        { tail -20 "$dir/install.log" >&2; die "./install.sh failed in the $suite tree; see $dir/install.log"; }
    rm -f "$root/usr/sbin/policy-rc.d"
    in_root 'apt-get clean'
    kver=$(find "$root/lib/modules" -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n1)
    grep -q '^CONFIG_MEM_SOFT_DIRTY=y' "$root/boot/config-$kver" || die "kernel $kver has no soft-dirty tracking"
    cp -f "$root/boot/vmlinuz-$kver" "$dir/vmlinuz"
    cp -f "$root/boot/initrd.img-$kver" "$dir/initrd.img"
    # The image, made from the directory: no loop device, no mount that could outlive this script unflushed.
    log "making $img from the tree (mkfs.ext4 -d)"
    truncate -s "${VM_DISK:-8G}" "$img.new"
    "${low[@]}" mkfs.ext4 -q -F -L cmigrate-vm -d "$root" "$img.new"
    e2fsck -fn "$img.new" > "$dir/e2fsck.log" 2>&1 || { cat "$dir/e2fsck.log" >&2; die "$img.new is not clean"; }
    debugfs -R 'cat /root/.ssh/authorized_keys' "$img.new" 2>/dev/null | cmp -s - "$key.pub" ||
        die "$img.new: /root/.ssh/authorized_keys is not the VM's key"
    sync -f "$img.new"
    mv -f "$img.new" "$img"
    rm -rf "$root"
    touch "$stamp"
    log "image ready: $img ($suite, kernel $kver, CONFIG_MEM_SOFT_DIRTY=y)"
}

start() {
    if running; then
        [ "$(cat "$running_suite" 2>/dev/null)" = "$suite" ] ||
            die "a $(cat "$running_suite" 2>/dev/null || echo other) VM is running: '$0 stop' it first"
        return 0
    fi
    lock
    if [ ! -f "$stamp" ] || [ ! -f "$dir/vmlinuz" ]; then build; fi
    not_in_use "$img"
    local cmdline="console=ttyS0 root=/dev/vda rw net.ifnames=0 apparmor=0"
    cmdline+=" systemd.unified_cgroup_hierarchy=$unified"
    if [ "$unified" = 0 ]; then cmdline+=" SYSTEMD_CGROUP_ENABLE_LEGACY_FORCE=1"; fi
    # shellcheck disable=SC2054  # the commas belong to qemu's own option syntax
    local args=(-m "${VM_MEM:-2048}" -smp 1 -kernel "$dir/vmlinuz" -initrd "$dir/initrd.img" -append "$cmdline"
                -drive "file=$img,format=raw,if=virtio,cache=writeback"
                -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$port-:22" -device virtio-net-pci,netdev=n0
                -display none -serial "file:$console" -monitor none -no-reboot -daemonize -pidfile "$pidfile")
    if [ "$accel" = kvm ]; then args+=(-enable-kvm -cpu "host,-arch-capabilities"); else args+=(-accel tcg -cpu max); fi
    echo "$suite" > "$running_suite"
    "${low[@]}" qemu-system-x86_64 "${args[@]}" 9>&-
    log "booting $suite ($accel, cgroup $([ "$unified" = 1 ] && echo v2 || echo v1)); waiting for ssh on port $port"
    for _ in $(seq 1 300); do
        if vm true 2>/dev/null; then log "up"; return 0; fi
        running || { tail -20 "$console" >&2; die "QEMU exited; see $console"; }
        sleep 2
    done
    log "no ssh after 600 s; see $console"
    stop
    exit 1
}

stop() {
    running || { rm -f "$pidfile" "$running_suite"; return 0; }
    local pid
    pid=$(cat "$pidfile")
    vm 'systemctl poweroff' 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    if kill -0 "$pid" 2>/dev/null; then kill "$pid"; fi
    rm -f "$pidfile" "$running_suite"
    log "stopped"
}

install_in_vm() {
    start
    log "copying this checkout into the VM and installing it"
    checkout | vm 'mkdir -p /root/cmigrate && tar -x -C /root/cmigrate'
    vm 'cd /root/cmigrate && ./install.sh'
}

test_in_vm() {
    start
    trap stop EXIT
    install_in_vm
    vm 'cd /root/cmigrate && .venv/bin/cmigrate lab up && .venv/bin/cmigrate lab status'
    # shellcheck disable=SC2016  # expanded in the VM
    vm 'echo "Debian $(cat /etc/debian_version), kernel $(uname -r), /sys/fs/cgroup: $(stat -fc %T /sys/fs/cgroup)";
        docker --version; echo "CRIU $(criu --version | awk "/^Version:/ {print \$2}")";
        criu check --feature mem_dirty_track' || true
    local words=()
    if [ $# -eq 0 ]; then set -- tests/lab/test_modes.py -k "pre_copy or auto"; fi
    for a in "$@"; do words+=("$(printf '%q' "$a")"); done
    vm "cd /root/cmigrate && .venv/bin/pytest -v -rs ${words[*]}; rc=\$?; .venv/bin/cmigrate lab down -q; exit \$rc"
}

case "${1:-start}" in
    build) build ;;
    start) start ;;
    stop) stop ;;
    install) install_in_vm ;;
    ssh) shift; vm "$@" ;;
    test) shift; test_in_vm "$@" ;;
    *) echo "usage: [VM_SUITE=bookworm|trixie] $0 test [PYTEST ARGS] | build | start | install | ssh [CMD] | stop" >&2; exit 2 ;;
esac
