#!/usr/bin/env bash
# The project's test command (README, and exactly what CI runs).
# Release mode: the numerical tests (finite differences, golden values, training) are far
# too slow unoptimised. Needs no data download and no network beyond crates.io.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release --workspace
# The optional `hub` feature pulls ~260 crates; make sure it still compiles, without building it.
cargo check --release --features hub
