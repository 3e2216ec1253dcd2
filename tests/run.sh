#!/usr/bin/env bash
# Install the dev requirements into ./.venv and run the whole test suite.
# Usage: bash tests/run.sh [pytest args…]
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
# Doubleword's own CLI is a test client; when it cannot run here its tests skip with the reason.
.venv/bin/python tests/prepare_dw_cli.py || echo "note: dw-cli could not be prepared; its tests will skip and say why"
exec .venv/bin/python -m pytest "$@"
