#!/usr/bin/env bash
# Benchmarks, printed as JSON. Speed targets live here, never in timed tests.
#
#   scripts/bench.sh train      mnist-cnn training images/s at batch 60, and — when the PyTorch
#                               reference is installed (~/.venv-ref, see shared/reference) — the
#                               same figure from ref.py measured in the same run, with the ratio.
#
# Environment: LEAFWALK_DATA (default data/), REF_PY (default ../shared/reference/ref.py),
# REF_VENV (default ~/.venv-ref), THREADS (default: all cores).
set -euo pipefail
cd "$(dirname "$0")/.."

what=${1:-train}
threads=${THREADS:-$(nproc)}
ref_py=${REF_PY:-../shared/reference/ref.py}
ref_python=${REF_VENV:-$HOME/.venv-ref}/bin/python
export LEAFWALK_DATA=${LEAFWALK_DATA:-data} RAYON_NUM_THREADS=$threads

case "$what" in
  train)
    cargo bench -q -p leafwalk-train --bench train >/tmp/leafwalk-bench-$$.json
    ours=$(cat /tmp/leafwalk-bench-$$.json); rm -f /tmp/leafwalk-bench-$$.json
    ref=null
    if [[ -x $ref_python && -f $ref_py && -d $LEAFWALK_DATA/mnist ]]; then
      out=$(mktemp)
      "$ref_python" "$ref_py" bench --data "$LEAFWALK_DATA/mnist" --threads "$threads" --no-connect --out "$out" >/dev/null
      ref=$(cat "$out"); rm -f "$out"
    else
      echo "bench: PyTorch reference not found ($ref_python, $ref_py, $LEAFWALK_DATA/mnist); reporting leafwalk only" >&2
    fi
    python3 - "$ours" "$ref" <<'PY'
import json, sys
ours, ref = json.loads(sys.argv[1]), json.loads(sys.argv[2])
out = {"leafwalk": ours}
if ref:
    r = ref["d_train_batch60_images_per_s"]
    out["pytorch_reference"] = {"torch": ref["torch"], "threads": ref["threads"], "images_per_s": r}
    out["ratio_leafwalk_over_pytorch"] = ours["images_per_s"] / r
print(json.dumps(out, indent=1))
PY
    ;;
  *) echo "usage: scripts/bench.sh train" >&2; exit 2 ;;
esac
