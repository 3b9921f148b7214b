#!/usr/bin/env bash
# Benchmarks, printed as JSON. Speed targets live here, never in timed tests.
#
#   scripts/bench.sh train      mnist-cnn training images/s at batch 60
#   scripts/bench.sh jacobian   mnist-cnn input-Jacobian points/s (hand-written pass, autograd)
#   scripts/bench.sh path       data-leaf paths: test 0 → 1 per integrator, Euler steps/s at 1 and 32
#                               paths; the reference's paper-style walk runs its 10,000 steps (~1–2 min)
#   scripts/bench.sh ood        ood-score images/s per score on MNIST test images (needs data/mnist;
#                               the two leaf-distance scores walk, ~1 min each on 200 images)
#
# When the PyTorch reference is installed (~/.venv-ref, see shared/reference), ref.py's own
# figures are measured in the same run and the ratios printed.
#
# Environment: LEAFWALK_DATA (default data/), REF_PY (default ../shared/reference/ref.py),
# REF_VENV (default ~/.venv-ref), THREADS (default: all cores).
set -euo pipefail
cd "$(dirname "$0")/.."

what=${1:-train}
threads=${THREADS:-$(nproc)}
ref_py=${REF_PY:-../shared/reference/ref.py}
ref_python=${REF_VENV:-$HOME/.venv-ref}/bin/python
# Absolute: cargo runs benchmarks from their crate folder.
export LEAFWALK_DATA=$(realpath -m "${LEAFWALK_DATA:-data}") RAYON_NUM_THREADS=$threads

reference_bench() {
  local connect=${1:---no-connect}
  if [[ -x $ref_python && -f $ref_py && -d $LEAFWALK_DATA/mnist ]]; then
    local out; out=$(mktemp)
    "$ref_python" "$ref_py" bench --data "$LEAFWALK_DATA/mnist" --threads "$threads" $connect --out "$out" >/dev/null 2>&1
    cat "$out"; rm -f "$out"
  else
    echo "bench: PyTorch reference not found ($ref_python, $ref_py, $LEAFWALK_DATA/mnist); reporting leafwalk only" >&2
    echo null
  fi
}

case "$what" in
  jacobian)
    ours=$(cargo bench -q -p leafwalk-geometry --bench jacobian)
    ref=$(reference_bench)
    python3 - "$ours" "$ref" <<'PY'
import json, sys
ours, ref = json.loads(sys.argv[1]), json.loads(sys.argv[2])
out = {"leafwalk": ours}
if ref:
    best = max(ref[k]["points_per_s"] for k in ("a_jacobian_paper_per_point", "b_jacobian_replicated_batch16", "b_jacobian_replicated_batch128", "b_jacobian_vmap_jacrev_batch128"))
    mine = max(v for k, v in ours["results"].items() if k.startswith("hand_written"))
    out["pytorch_reference"] = {k: ref[k] for k in ref if k.startswith(("a_", "b_"))} | {"torch": ref["torch"], "threads": ref["threads"]}
    out["ratio_best_leafwalk_over_best_pytorch"] = mine / best
print(json.dumps(out, indent=1))
PY
    ;;
  train)
    cargo bench -q -p leafwalk-train --bench train >/tmp/leafwalk-bench-$$.json
    ours=$(cat /tmp/leafwalk-bench-$$.json); rm -f /tmp/leafwalk-bench-$$.json
    ref=$(reference_bench)
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
  ood)
    cargo bench -q -p leafwalk-ood --bench ood
    ;;
  path)
    ours=$(cargo bench -q -p leafwalk-walk --bench path)
    ref=$(reference_bench --reference-connect)
    python3 - "$ours" "$ref" <<'PY'
import json, sys
ours, ref = json.loads(sys.argv[1]), json.loads(sys.argv[2])
out = {"leafwalk": ours}
if ref:
    r = ours["results"]
    paper = ref["c_connect_test0_to_test1_paper"]
    out["pytorch_reference"] = {"torch": ref["torch"], "threads": ref["threads"],
        "paper_steps_per_s": ref["c_path_paper_steps_per_s"],
        "reference_float64_steps_per_s": ref["c_path_reference_float64_steps_per_s"],
        "connect_test0_to_test1_paper": paper,
        "connect_test0_to_test1_reference_float64": ref.get("c_connect_test0_to_test1_reference")}
    out["ratio_euler_steps_per_s_over_paper"] = r["euler_steps_per_s_1_paths"] / ref["c_path_paper_steps_per_s"]
    out["ratio_euler_32_paths_steps_per_s_over_paper"] = r["euler_steps_per_s_32_paths"] / ref["c_path_paper_steps_per_s"]
    adaptive = r["connect_test0_to_test1_adaptive"]["seconds_to_reference_end"]
    if adaptive:
        out["ratio_reference_wall_over_adaptive_to_its_end"] = paper["wall_s"] / adaptive
print(json.dumps(out, indent=1))
PY
    ;;
  *) echo "usage: scripts/bench.sh train|jacobian|path|ood" >&2; exit 2 ;;
esac
