#!/usr/bin/env bash
# missing-packages.sh PACKAGE...: print, one per line, each Debian package of the arguments that is not installed.
#
# One dpkg-query per package: asked for several at once, dpkg-query exits non-zero as soon as one of them is
# unknown to dpkg, and a pipeline built on that under `set -o pipefail` once reported nothing missing on a new
# machine where nearly everything was. A package counts as installed only in state "ii" (wanted, installed);
# "rc" (removed, configs left), "iU" (unpacked) and unknown packages are missing.
set -uo pipefail
for p in "$@"; do
    # shellcheck disable=SC2016  # ${db:Status-Abbrev} is dpkg-query's format, not the shell's
    status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null) || status=""
    [ "${status:0:2}" = ii ] || printf '%s\n' "$p"
done
exit 0
