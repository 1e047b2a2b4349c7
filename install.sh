#!/usr/bin/env bash
# cmigrate installer: Docker, sshd, CRIU (built from Debian's source), and the project's virtualenv.
#
# Idempotent: a second run on a machine it already set up skips every step whose result is in place.
# Usage: ./install.sh            (as root, on Debian 12 or newer)
# Environment: CMIGRATE_VENV (default: <repo>/.venv), CMIGRATE_CRIU_MIN (default 4.2.1),
#              CMIGRATE_CACHE (default /var/cache/cmigrate).
set -euo pipefail

repo=$(cd "$(dirname "$0")" && pwd)
venv=${CMIGRATE_VENV:-$repo/.venv}
criu_min=${CMIGRATE_CRIU_MIN:-4.2.1}
cache=${CMIGRATE_CACHE:-/var/cache/cmigrate}
criu_prefix=/usr/local
pycriu_home=$criu_prefix/lib/cmigrate-pycriu
export DEBIAN_FRONTEND=noninteractive

say() { printf 'install: %s\n' "$*"; }
die() { printf 'install: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (try: sudo $0)"
[ -r /etc/os-release ] || die "cannot read /etc/os-release: only Debian 12 or newer is supported"
# shellcheck source=/dev/null
. /etc/os-release
[ "${ID:-}" = debian ] || die "this is ${PRETTY_NAME:-an unknown system}, not Debian: only Debian 12 or newer is supported"
major=${VERSION_ID%%.*}
if [ -n "${major}" ] && [ "${major}" -lt 12 ] 2>/dev/null; then
    die "Debian ${VERSION_ID} is too old: Debian 12 or newer is required"
fi

# ---------------------------------------------------------------- Debian packages
runtime_pkgs=(docker.io containerd runc openssh-server openssh-client iproute2 busybox-static iptables nftables
  python3 python3-venv ca-certificates xz-utils tar util-linux procps zstd)
# Debian 13 split Docker's client out of docker.io (which then has no /usr/bin/docker) into docker-cli.
if [ "${major:-0}" -ge 13 ] 2>/dev/null || [ -z "${VERSION_ID:-}" ]; then runtime_pkgs+=(docker-cli); fi
build_pkgs=(build-essential pkg-config libprotobuf-dev libprotobuf-c-dev protobuf-c-compiler protobuf-compiler
  python3-protobuf libnl-3-dev libnet1-dev libcap-dev libbsd-dev libgnutls28-dev libnftables-dev uuid-dev
  libaio-dev dpkg-dev patch)
# what the tests use: shellcheck on the scripts, `vagrant validate` on the Vagrant lab, debootstrap and git for
# the new-machine check (tests/platforms); redis-tools for the bench's database-like workload (the lab copies its
# Redis into an image; this package runs no server on the machine)
check_pkgs=(vagrant shellcheck debootstrap git redis-tools)
all_pkgs=("${runtime_pkgs[@]}" "${build_pkgs[@]}" "${check_pkgs[@]}")
mapfile -t missing < <("$repo/scripts/missing-packages.sh" "${all_pkgs[@]}")
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    mapfile -t missing < <("$repo/scripts/missing-packages.sh" "${all_pkgs[@]}")
    [ "${#missing[@]}" -eq 0 ] || die "apt-get installed, but these packages are still missing: ${missing[*]}"
else
    say "Debian packages: already installed"
fi
command -v docker >/dev/null || die "no docker command after installing ${runtime_pkgs[*]}"

# ---------------------------------------------------------------- CRIU
version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]; }
criu_version() { "$criu_prefix/sbin/criu" --version 2>/dev/null | awk '/^Version:/ {print $2}'; }

# CRIU probes the kernel on every run (~25 ms, two iptables runs among it) unless it finds the result cached in
# its run directory, which it only trusts on a tmpfs (gone at reboot, like the kernel it describes). Ours is
# $kdat_dir: a tmpfs of its own where /run is not one (as on this project's CI VM); stock Debian's /run is.
kdat_dir=/run/criu
# Our patches to CRIU (patches/criu, each says why): the build stamp names them, so that a change rebuilds it.
criu_stamp=$criu_prefix/lib/cmigrate-criu.build
criu_build="rundir=$kdat_dir patches=$(cat "$repo"/patches/criu/*.patch | sha256sum | cut -d' ' -f1)"
have=$(criu_version || true)
if [ -n "$have" ] && version_ge "$have" "$criu_min" && [ -f "$pycriu_home/pycriu/__init__.py" ] &&
   [ "$(cat "$criu_stamp" 2>/dev/null)" = "$criu_build" ]; then
    say "CRIU $have: already installed at $criu_prefix/sbin/criu"
else
    say "building CRIU >= $criu_min from Debian's source (found: ${have:-none})"
    mkdir -p "$cache/apt/lists/partial" "$cache/src"
    # A private apt source list for sid's source packages, on the same mirror this machine already uses.
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' /etc/apt/sources.list 2>/dev/null || true)
    [ -n "$mirror" ] || die "cannot find this machine's Debian mirror in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list"
    echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror sid main" > "$cache/apt/sid-src.list"
    apt_src=(-o "Dir::Etc::SourceList=$cache/apt/sid-src.list" -o Dir::Etc::SourceParts=/dev/null
             -o "Dir::State::Lists=$cache/apt/lists" -o Debug::NoLocking=1)
    apt-get "${apt_src[@]}" update -qq
    cd "$cache/src"
    rm -f criu_*.dsc
    # The debian/ tarball has been seen to answer 404; the upstream tree builds without it.
    apt-get "${apt_src[@]}" source --download-only criu >/dev/null 2>&1 || true
    dsc=$(find . -maxdepth 1 -name 'criu_*.dsc' -printf '%f\n' | sort -V | tail -n1)
    [ -n "$dsc" ] || die "could not download criu's .dsc from Debian sid"
    orig=$(awk '/^Checksums-Sha256:/ {f = 1; next} f && /^ / && $3 ~ /orig\.tar/ {print $3; exit}' "$dsc")
    sum=$(awk -v o="$orig" '/^Checksums-Sha256:/ {f = 1; next} f && /^ / && $3 == o {print $1; exit}' "$dsc")
    if [ -z "$orig" ] || [ ! -f "$orig" ]; then die "criu's orig tarball ($orig) was not downloaded"; fi
    echo "$sum  $orig" | sha256sum -c --quiet - || die "$orig does not match the checksum in $dsc"
    ver=${orig#criu_}; ver=${ver%.orig.tar.*}
    version_ge "$ver" "$criu_min" || die "Debian sid offers CRIU $ver, older than the required $criu_min"
    rm -rf "criu-$ver"
    mkdir "criu-$ver"
    tar -xf "$orig" -C "criu-$ver" --strip-components=1
    cd "criu-$ver"
    for p in "$repo"/patches/criu/*.patch; do
        patch -s -p1 < "$p" || die "cannot apply $p to CRIU $ver"
    done
    make -j"$(nproc)" RUNDIR="$kdat_dir" criu >/dev/null
    make lib >/dev/null
    install -D -m 0755 criu/criu "$criu_prefix/sbin/criu"
    rm -rf "$pycriu_home"
    mkdir -p "$pycriu_home"
    cp -r lib/pycriu "$pycriu_home/pycriu"
    echo "$criu_build" > "$criu_stamp"
    have=$(criu_version)
    say "CRIU $have installed at $criu_prefix/sbin/criu (source: Debian sid $orig, sha256 verified;" \
        "patches: $(cd "$repo/patches/criu" && echo *.patch))"
fi
# a minimal system (no systemd) has no /etc/tmpfiles.d; the entry still tells a later systemd what to make
mkdir -p /etc/tmpfiles.d
echo "d $kdat_dir 0700 root root -" > /etc/tmpfiles.d/cmigrate-criu.conf
install -d -m 0700 "$kdat_dir"
if [ "$(stat -f -c %T "$kdat_dir")" != tmpfs ]; then
    mount -t tmpfs -o size=1m,mode=0700 cmigrate-criu-kdat "$kdat_dir"
    say "CRIU's kernel-probe cache: a tmpfs at $kdat_dir (/run is not a tmpfs here)"
fi

# ---------------------------------------------------------------- virtualenv
py=python3
$py -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "python3 >= 3.11 is required (found $($py --version 2>&1))"
stamp="$venv/.cmigrate-installed"
want=$(sha256sum < "$repo/pyproject.toml" | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$venv/bin/python" -c '' 2>/dev/null; then
    say "virtualenv: up to date at $venv"
else
    say "creating virtualenv at $venv"
    $py -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip >/dev/null
    "$venv/bin/pip" install -q -e "${repo}[test]"
    echo "$want" > "$stamp"
fi
# pycriu comes from the CRIU build, not from PyPI.
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$pycriu_home" > "$site/cmigrate-pycriu.pth"
"$venv/bin/python" -c 'import pycriu, docker, paramiko, zstandard, tqdm' || die "the virtualenv cannot import its dependencies"
# Agents run over SSH as `cmigrate-agent` on each host's PATH.
ln -sf "$venv/bin/cmigrate-agent" /usr/local/bin/cmigrate-agent
ln -sf "$venv/bin/cmigrate" /usr/local/bin/cmigrate
# The restore fast path: register it with dockerd as runtime "cmigrate-runc" (the lab does; see README).
ln -sf "$repo/agents/cmigrate-runc" /usr/local/bin/cmigrate-runc
say "done: $("$venv/bin/cmigrate" --version)"
