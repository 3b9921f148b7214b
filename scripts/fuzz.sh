#!/usr/bin/env bash
# The mutation tests' generators (tests/mutations.rs) run for SECONDS in all, shared evenly among
# the formats, instead of their fixed 500 cases each. Prints one JSON line per format (cases
# tried, failures) and exits non-zero if any case failed; failing inputs land in
# target/fuzz-failures/.
#
#   scripts/fuzz.sh [SECONDS]      # default 60
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
cargo test --release -q --test mutations --no-run
formats=$(cargo test --release -q --test mutations -- --list 2>/dev/null | grep -c ': test$')
per_format=$(python3 -c "print($seconds / $formats)")
status=0
output=$(LEAFWALK_FUZZ_SECONDS=$per_format cargo test --release -q --test mutations -- --nocapture --test-threads 1 2>&1) || status=$?
grep -o '{"format"[^}]*}' <<<"$output" || true
if ((status != 0)); then
  grep -E 'case [0-9]+ \(' <<<"$output" | head -20 >&2
  exit "$status"
fi
