#!/usr/bin/env bash
# The Python package: builds and installs it from bindings/python into a venv (target/py-venv,
# made on first use; numpy and pytest from PyPI, maturin fetched by pip as the build backend),
# then runs its pytest suite. Part of the README's test command, after `cargo test --release`
# (the suite compares with the CLI binary that builds).
#
#   scripts/python-tests.sh [--install-only] [PYTEST ARGS...]
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${LEAFWALK_PY_VENV:-target/py-venv}
if [[ ! -x $venv/bin/python ]]; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q numpy pytest
fi
# The wheel builds in this workspace's target folder, so the crates compiled for the tests are reused.
"$venv/bin/python" -m pip install -q --force-reinstall --no-deps ./bindings/python
[[ ${1:-} == --install-only ]] && exit 0
"$venv/bin/python" -m pytest -q -rs bindings/python/tests "$@"
