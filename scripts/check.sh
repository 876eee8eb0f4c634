#!/usr/bin/env bash
# The whole test command: lint, format check, types, then the test suite on real services.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
export PATH="$PWD/$VENV/bin:$PATH"
status=0
echo "== ruff check"; ruff check . || status=1
echo "== ruff format --check"; ruff format --check . || status=1
echo "== mypy"; mypy || status=1
# One way to do each thing: pylint's duplicate-code check (R0801) on every package; a report is fixed by
# extracting a shared helper, never by raising the threshold.
echo "== duplicate code"
pylint --disable=all --enable=duplicate-code --min-similarity-lines=10 --ignore-imports=yes \
    --ignore-docstrings=yes --score=n schemas worker querylife harness analysis reliability benchmarks || status=1
echo "== pytest"
pytest -q -p no:cacheprovider "$@"
rc=$?
# pytest exit 5 means "no tests collected": that is a failure of the suite, not a pass.
if [ $rc -eq 5 ]; then echo "pytest collected no tests"; rc=1; fi
[ $rc -ne 0 ] && status=$rc
exit $status
