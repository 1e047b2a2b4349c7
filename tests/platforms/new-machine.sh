#!/usr/bin/env bash
# new-machine.sh: try the README's install on a NEW Debian machine, and optionally the lab tests there.
#
#   tests/platforms/new-machine.sh SUITE [--worktree] [--keep] [--reuse] [-- PYTEST ARGS]
#
# SUITE is a Debian release (bookworm, trixie). The machines this project is built and tested on had their packages
# installed long ago, so a broken install step stays green there; this script makes a minimal Debian root with
# debootstrap (cached under $CMIGRATE_CACHE/roots, a fresh copy for each run), copies in only what every build
# machine has (the apt settings in /etc/apt/apt.conf.d/99* and the sources in /etc/apt/sources.list.d, pip's
# /etc/pip.conf, /etc/xdg/pip and PIP_* environment, the CA certificates in /usr/local/share/ca-certificates),
# clones the commit under test into it (--worktree: copies this working tree's files instead) and, inside it:
#   1. runs ./install.sh from nothing (must succeed),
#   2. runs ./install.sh again (must finish in under $CMIGRATE_REINSTALL_MAX seconds, default 30),
#   3. with PYTEST ARGS: runs ./test.sh PYTEST ARGS, the lab and the tests, in a network namespace of its own (its
#      bridge and addresses never meet this machine's own lab).
# The root is entered with pivot_root in mount and PID namespaces of its own, not chroot: under chroot `ip netns
# add` fails and CRIU refuses to dump ("mnt: The root task has another root than mntns"). When the script ends,
# the PID namespace ends and every process started in the root with it. The copy is removed unless --keep.
# --reuse (for development): take the root a --keep run left, put the project in anew, skip steps 1 and 2.
# Exit status: 0 when every step passed; 1 otherwise (the step is named on stderr). Lines of the root's output
# are prefixed with "[SUITE] ".
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
cache=${CMIGRATE_CACHE:-/var/cache/cmigrate}
work_base=${CMIGRATE_PLATFORM_WORK:-/var/tmp/cmigrate-platforms}
reinstall_max=${CMIGRATE_REINSTALL_MAX:-30}
say() { printf 'new-machine: %s\n' "$*" >&2; }
die() { printf 'new-machine: error: %s\n' "$*" >&2; exit 1; }

suite=${1:-}
case "$suite" in
    bookworm|trixie) shift ;;
    *) echo "usage: $0 bookworm|trixie [--worktree] [--keep] [--reuse] [-- PYTEST ARGS]" >&2; exit 2 ;;
esac
worktree=0 keep=0 reuse=0 tests=()
while [ $# -gt 0 ]; do
    case "$1" in
        --worktree) worktree=1 ;;
        --keep) keep=1 ;;
        --reuse) reuse=1 keep=1 ;;
        --) shift; tests=("$@"); break ;;
        *) echo "new-machine: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
[ "$(id -u)" -eq 0 ] || die "must run as root"
for tool in debootstrap unshare pivot_root git; do
    command -v "$tool" >/dev/null || die "$tool is not installed (./install.sh installs it)"
done
sources=/etc/apt/sources.list.d/debian.sources
mirror=$(awk '/^URIs:/ {print $2; exit}' "$sources" 2>/dev/null || true)
[ -n "$mirror" ] || die "no Debian mirror in $sources: this check uses the machine's own apt sources only"

# ---------------------------------------------------------------- the pristine root (cached)
pristine=$cache/roots/$suite
if [ ! -f "$pristine/.cmigrate-debootstrap-complete" ]; then
    say "debootstrap --variant=minbase $suite (once; cached in $pristine)"
    rm -rf --one-file-system "$pristine"
    mkdir -p "$pristine"
    debootstrap --variant=minbase "$suite" "$pristine" "$mirror" > "$cache/roots/$suite.debootstrap.log" 2>&1 ||
        { tail -n 20 "$cache/roots/$suite.debootstrap.log" >&2; die "debootstrap $suite failed"; }
    touch "$pristine/.cmigrate-debootstrap-complete"
fi

# ---------------------------------------------------------------- a fresh copy for this run
root=$work_base/$suite
if [ "$reuse" = 1 ] && [ -x "$root/root/cmigrate/.venv/bin/cmigrate" ]; then
    say "reusing the installed root at $root"
else
    reuse=0
    if [ -d "$root" ]; then rm -rf --one-file-system "$root"; fi
    mkdir -p "$work_base"
    cp -a "$pristine" "$root"
    rm -f "$root/.cmigrate-debootstrap-complete"
fi
cleanup() {
    local rc=$?
    if [ "$keep" = 1 ] || [ "$rc" -ne 0 ]; then
        say "the root is kept at $root"
    else
        rm -rf --one-file-system "$root"
    fi
}
trap cleanup EXIT

# What every build machine has beside its packages, and nothing else. The sources name this machine's release:
# the root's own suite stands in for it, on the same mirror.
# shellcheck source=/dev/null
here_suite=$(. /etc/os-release && echo "$VERSION_CODENAME")
cp -a /etc/apt/apt.conf.d/99* "$root/etc/apt/apt.conf.d/" 2>/dev/null || true
rm -f "$root/etc/apt/sources.list"
for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    sed "s/\\b$here_suite\\b/$suite/g" "$f" > "$root/etc/apt/sources.list.d/$(basename "$f")"
done
[ -f /etc/pip.conf ] && cp -a /etc/pip.conf "$root/etc/pip.conf"
if [ -d /etc/xdg/pip ]; then mkdir -p "$root/etc/xdg"; cp -a /etc/xdg/pip "$root/etc/xdg/"; fi
if [ -d /usr/local/share/ca-certificates ]; then
    mkdir -p "$root/usr/local/share/ca-certificates"
    cp -a /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
fi
env_args=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 TERM=dumb)
while IFS= read -r var; do env_args+=("$var"); done < <(env | grep '^PIP_' || true)
[ -n "${CI:-}" ] && env_args+=("CI=$CI")

# The project: the commit under test, or (--worktree) this working tree's tracked and new files.
dest=$root/root/cmigrate
if [ "$reuse" = 1 ]; then   # keep the installed virtualenv, replace the rest
    find "$dest" -mindepth 1 -maxdepth 1 ! -name .venv -exec rm -rf --one-file-system {} +
fi
mkdir -p "$dest"
if [ "$worktree" = 1 ]; then
    (cd "$repo" && git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf -) | tar -x -C "$dest"
    what="the working tree of $repo"
else
    commit=$(git -C "$repo" rev-parse HEAD)
    git -C "$dest" init -q
    git -C "$dest" fetch -q "$repo" "$commit"
    git -C "$dest" checkout -q --detach FETCH_HEAD
    what="commit $commit"
fi
say "$suite root at $root with $what"

# ---------------------------------------------------------------- inside the root
# Runs as PID 1 of a new PID namespace, in a new mount namespace: mount what a booted system has, pivot into the
# root, drop the old one. $1: the root; the rest: the command to run there.
# shellcheck disable=SC2016  # expanded by the shell inside the namespaces
enter='set -e
root=$1; shift
mount --make-rprivate /
mount --bind "$root" "$root"
cd "$root"
mount -t proc proc proc
mount --rbind /sys sys
mount --rbind /dev dev
mount -t tmpfs -o mode=0755 tmpfs run
mount -t tmpfs -o mode=1777 tmpfs tmp
mkdir -p .oldroot
pivot_root . .oldroot
cd /
umount -l /.oldroot
rmdir /.oldroot
exec "$@"'
in_root() {
    unshare --mount --pid --fork --kill-child bash -c "$enter" enter "$root" env -i "${env_args[@]}" "$@" 2>&1 |
        sed -u "s/^/[$suite] /"
}

ms() { echo $(($(date +%s%N) / 1000000)); }
seconds() { printf '%d.%03d' $(($1 / 1000)) $(($1 % 1000)); }
if [ "$reuse" = 0 ]; then
say "step 1: ./install.sh on a new $suite machine"
t0=$(ms)
in_root bash -c 'cd /root/cmigrate && ./install.sh' || die "step 1: ./install.sh failed on a new $suite machine"
t1=$(ms)
say "step 1 passed: installed from nothing in $(seconds $((t1 - t0))) s"

say "step 2: ./install.sh again"
in_root bash -c 'cd /root/cmigrate && ./install.sh' || die "step 2: the second ./install.sh failed on $suite"
t2=$(ms)
say "step 2: the second run took $(seconds $((t2 - t1))) s"
[ $((t2 - t1)) -lt $((reinstall_max * 1000)) ] ||
    die "step 2: the second ./install.sh took $(seconds $((t2 - t1))) s (limit ${reinstall_max} s): it redid work"
fi

if [ "${#tests[@]}" -gt 0 ]; then
    say "step 3: ./test.sh ${tests[*]} (lab and tests in a network namespace of their own)"
    words=$(printf ' %q' "${tests[@]}")
    # shellcheck disable=SC2016  # $words is expanded here on purpose, the rest inside the root
    in_root unshare --net bash -c 'ip link set lo up && cd /root/cmigrate && ./test.sh'"$words" ||
        die "step 3: ./test.sh${words} failed on $suite"
    say "step 3 passed"
fi
say "$suite: all steps passed"
