#!/usr/bin/env bash
# Install, bring the lab up (hostA, hostB and hostC, for the fleet tests), run the whole test suite on it, and tear
# the lab down even when tests fail.
# Extra arguments go to pytest (e.g. ./test.sh -k checkpoint). Exit status: pytest's (5, no tests, is a failure).
set -uo pipefail
cd "$(dirname "$0")" || exit 1
./install.sh || exit 1
teardown() { .venv/bin/cmigrate lab down -q || echo "test.sh: lab down failed" >&2; }
trap teardown EXIT
.venv/bin/cmigrate lab up --hosts 3 || exit 1
.venv/bin/pytest "$@"
