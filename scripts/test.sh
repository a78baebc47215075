#!/usr/bin/env bash
# Lint, then the whole test suite. Extra arguments go to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
ruff check . || exit 1
python3 -m pytest "$@"
rc=$?
# pytest exits 5 when a selection collected no test: not a failure of ours.
if [ "$rc" = 5 ]; then exit 0; fi
exit "$rc"
