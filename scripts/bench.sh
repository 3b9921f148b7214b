#!/usr/bin/env bash
# The benchmark suite, one JSON line per benchmark. Speed targets live here, never in timed tests.
#
#   scripts/bench.sh [train|geometry|path|ood|all] [--device cpu|cuda[:N]]    (default: all, cpu)
#
#   train      mnist-cnn training images/s at batch 60 (SGD)
#   geometry   mnist-cnn input-Jacobian points/s at B = 1 … 1,024 (hand-written pass; autograd at
#              1–32) and the seconds for J of all 2,000 MNIST test points   (alias: jacobian)
#   path       data-leaf paths: test 0 → 1 per integrator, host Euler steps/s at 1 and 32 paths,
#              device Euler path-steps/s at 1 … 1,024 paths (one fused kernel per step)
#   ood        ood-score images/s per score on MNIST test images (needs data/mnist; the two
#              leaf-distance scores walk, ~1 min each on 200 images)
#
# When the PyTorch reference is installed (~/.venv-ref, see shared/reference), ref.py's own figures
# are measured once in the same run on the same device and the ratios printed; `path` and `all`
# include its 10,000-step paper walk (~1–2 min).
#
# Environment: LEAFWALK_DATA (default data/), REF_PY (default ../shared/reference/ref.py),
# REF_VENV (default ~/.venv-ref), THREADS (default: all cores), CARGO_TARGET_DIR and the cargo
# features (CARGO_FEATURES, e.g. "cuda") of the benchmark build.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { echo "usage: scripts/bench.sh [train|geometry|path|ood|all] [--device cpu|cuda[:N]]" >&2; exit 2; }
what=all
device=cpu
while (($#)); do
  case $1 in
    train|geometry|jacobian|path|ood|all) what=$1; shift ;;
    --device) (($# >= 2)) || usage; device=$2; shift 2 ;;
    --device=*) device=${1#*=}; shift ;;
    *) usage ;;
  esac
done
[[ $what == jacobian ]] && what=geometry
threads=${THREADS:-$(nproc)}
ref_py=${REF_PY:-../shared/reference/ref.py}
ref_python=${REF_VENV:-$HOME/.venv-ref}/bin/python
features=${CARGO_FEATURES:+--features $CARGO_FEATURES}
# Absolute: cargo runs benchmarks from their crate folder.
export LEAFWALK_DATA=$(realpath -m "${LEAFWALK_DATA:-data}") RAYON_NUM_THREADS=$threads LEAFWALK_DEVICE=$device

# ref.py's figures, measured once per run (with its paper walk when a path figure is wanted).
ref_cache=$(mktemp)
trap 'rm -f "$ref_cache"' EXIT
reference() {
  if [[ ! -s $ref_cache ]]; then
    local connect=--no-connect
    [[ $what == path || $what == all ]] && connect=--reference-connect
    if [[ -x $ref_python && -f $ref_py && -d $LEAFWALK_DATA/mnist ]]; then
      local out; out=$(mktemp)
      "$ref_python" "$ref_py" bench --data "$LEAFWALK_DATA/mnist" --threads "$threads" --device "${device%%:*}" \
        $connect --out "$out" >/dev/null 2>&1 && cat "$out" >"$ref_cache" || echo null >"$ref_cache"
      rm -f "$out"
    else
      echo "bench: PyTorch reference not found ($ref_python, $ref_py, $LEAFWALK_DATA/mnist); reporting leafwalk only" >&2
      echo null >"$ref_cache"
    fi
  fi
  cat "$ref_cache"
}

# `cargo bench` of one crate's benchmark, then a Python snippet that adds the reference's
# figures and the ratios: python3 - OURS REF <<'PY' … PY.
ours() { cargo bench -q $features -p "$1" --bench "$2"; }

geometry() {
  python3 - "$(ours leafwalk-geometry jacobian)" "$(reference)" <<'PY'
import json, sys
ours, ref = json.loads(sys.argv[1]), json.loads(sys.argv[2])
out = {"leafwalk": ours}
if ref:
    best = max(ref[k]["points_per_s"] for k in ("a_jacobian_paper_per_point", "b_jacobian_replicated_batch16", "b_jacobian_replicated_batch128", "b_jacobian_vmap_jacrev_batch128"))
    mine = max(v for k, v in ours["results"].items() if k.startswith("hand_written") and k.endswith("points_per_s"))
    out["pytorch_reference"] = {k: ref[k] for k in ref if k.startswith(("a_", "b_"))} | {"torch": ref["torch"], "threads": ref["threads"], "device": ref.get("device")}
    out["ratio_best_leafwalk_over_best_pytorch"] = mine / best
print(json.dumps(out))
PY
}

train() {
  python3 - "$(ours leafwalk-train train)" "$(reference)" <<'PY'
import json, sys
ours, ref = json.loads(sys.argv[1]), json.loads(sys.argv[2])
out = {"leafwalk": ours}
if ref:
    r = ref["d_train_batch60_images_per_s"]
    out["pytorch_reference"] = {"torch": ref["torch"], "threads": ref["threads"], "device": ref.get("device"), "images_per_s": r}
    out["ratio_leafwalk_over_pytorch"] = ours["images_per_s"] / r
print(json.dumps(out))
PY
}

path() {
  python3 - "$(ours leafwalk-walk path)" "$(reference)" <<'PY'
import json, sys
ours, ref = json.loads(sys.argv[1]), json.loads(sys.argv[2])
out = {"leafwalk": ours}
if ref:
    r = ours["results"]
    paper = ref.get("c_connect_test0_to_test1_paper")
    out["pytorch_reference"] = {"torch": ref["torch"], "threads": ref["threads"], "device": ref.get("device"),
        "paper_steps_per_s": ref["c_path_paper_steps_per_s"],
        "reference_float64_steps_per_s": ref["c_path_reference_float64_steps_per_s"],
        "connect_test0_to_test1_paper": paper,
        "connect_test0_to_test1_reference_float64": ref.get("c_connect_test0_to_test1_reference")}
    out["ratio_euler_steps_per_s_over_paper"] = r["euler_steps_per_s_1_paths"] / ref["c_path_paper_steps_per_s"]
    out["ratio_euler_32_paths_steps_per_s_over_paper"] = r["euler_steps_per_s_32_paths"] / ref["c_path_paper_steps_per_s"]
    out["ratio_device_euler_1024_paths_over_paper"] = r["device_euler_path_steps_per_s_1024_paths"] / ref["c_path_paper_steps_per_s"]
    adaptive = r["connect_test0_to_test1_adaptive"]["seconds_to_reference_end"]
    if adaptive and paper:
        out["ratio_reference_wall_over_adaptive_to_its_end"] = paper["wall_s"] / adaptive
print(json.dumps(out))
PY
}

ood() { ours leafwalk-ood ood; }

case $what in
  all) train; geometry; path; ood ;;
  *) "$what" ;;
esac
