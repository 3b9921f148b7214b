#!/usr/bin/env bash
# Builds the CUDA binary (target-cuda/release/leafwalk) on a machine without a CUDA toolkit or
# GPU, from PyPI's CUDA 13.0 wheels and a link-only libcuda stub (../shared/scripts/
# cuda-toolchain.sh; ≈650 MB once, ≈16 min first build on 2 cores). With a CUDA toolkit
# installed, plain `cargo build --release --features cuda` does the same.
#
# Environment: CUDA_COMPUTE_CAP (default 90: H100/H200), TOOLCHAIN (default
# ../shared/scripts/cuda-toolchain.sh), CARGO_TARGET_DIR (default target-cuda, so CPU builds
# stay warm).
set -euo pipefail
cd "$(dirname "$0")/.."
toolchain=${TOOLCHAIN:-../shared/scripts/cuda-toolchain.sh}
if ! command -v nvcc >/dev/null; then
  [[ -x $toolchain ]] || { echo "build-cuda: no nvcc on PATH and no $toolchain to fetch one" >&2; exit 1; }
  cargo fetch -q
  eval "$("$toolchain")"
fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target-cuda}
cargo build --release --features cuda "$@"
echo "built $CARGO_TARGET_DIR/release/leafwalk (run it where an NVIDIA driver is present)" >&2
