#!/usr/bin/env bash
# The benchmark suite, one JSON line per benchmark. Speed targets live here, never in timed tests.
#
#   scripts/bench.sh [train|geometry|scale|import|path|ood|python|all] [--device cpu|cuda[:N]] [--baseline REV]
#                    [--rounds R]                                            (default: all, cpu, 1)
#
#   train      training images/s at batch 60 (SGD) of mnist-cnn and resnet-mini
#   geometry   input-Jacobian points/s through the engine: mnist-cnn at B = 1 … 1,024 (autograd
#              at 16) and the seconds for J of all 2,000 MNIST test points; the PyTorch
#              fixtures lenet5, vgg-bn-small, resnet-mini at B = 1 and 16   (alias: jacobian)
#   scale      one 3×224×224 point of a 1,000-class resnet18: J, spectrum, leaf basis, peak memory
#              (~2 min; not part of `all`)
#   import     seconds to load a 1,000-class resnet18-shaped ONNX file (47 MB) as a model
#   path       data-leaf paths: test 0 → 1 per integrator, host Euler steps/s at 1 and 32 paths,
#              device Euler path-steps/s at 1 … 1,024 paths (one fused kernel per step)
#   ood        ood-score images/s per score on MNIST test images (needs data/mnist; the two
#              leaf-distance scores walk, ~1 min each on 200 images)
#   python     the Python package's `Model.jacobian` against the engine's own figure at batch 64
#              (lenet5, resnet-mini fixtures; same timing; installs the package into
#              target/py-venv first; with --rounds, the two take turns; not part of `all`), and
#              against the same Rust pass timed inside the Python process between the calls
#              (`ratio_python_over_engine_in_process_batch64`: neighbours, so drift cancels)
#
# When the PyTorch reference is installed (~/.venv-ref, see shared/reference), ref.py's own figures
# are measured once in the same run on the same device and the ratios printed; `path` and `all`
# include its 10,000-step paper walk (~1–2 min). For the fixtures, shared/models/torch_models.py
# (Jacobian) and scripts/torch_train_bench.py (training) time PyTorch on the same models.
#
# --baseline REV also builds revision REV's geometry and train benchmarks (a git worktree under
# target/bench-baseline, its own target folder: a full build the first time) and reports them
# beside this tree's, measured in the same run — how a change is compared with what it replaces.
#
# --rounds R repeats `train` and `geometry` R times, leafwalk, the baseline and PyTorch taking
# turns, and prints one line with every round and each ratio's median over the rounds: on a
# shared machine whose speed drifts by 20 % within minutes, a ratio of two measurements taken
# minutes apart is mostly drift, and a ratio of neighbours, repeated, is not.
#
# Environment: LEAFWALK_DATA (default data/), REF_PY (default ../shared/reference/ref.py),
# REF_MODELS (default ../shared/models), REF_VENV (default ~/.venv-ref), THREADS (default: all
# cores), CARGO_TARGET_DIR and the cargo features (CARGO_FEATURES, e.g. "cuda") of the benchmark
# build.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { echo "usage: scripts/bench.sh [train|geometry|scale|import|path|ood|python|all] [--device cpu|cuda[:N]] [--baseline REV] [--rounds R]" >&2; exit 2; }
what=all
device=cpu
baseline=
rounds=1
while (($#)); do
  case $1 in
    train|geometry|jacobian|scale|import|path|ood|python|all) what=$1; shift ;;
    --device) (($# >= 2)) || usage; device=$2; shift 2 ;;
    --device=*) device=${1#*=}; shift ;;
    --baseline) (($# >= 2)) || usage; baseline=$2; shift 2 ;;
    --baseline=*) baseline=${1#*=}; shift ;;
    --rounds) (($# >= 2)) || usage; rounds=$2; shift 2 ;;
    --rounds=*) rounds=${1#*=}; shift ;;
    *) usage ;;
  esac
done
[[ $what == jacobian ]] && what=geometry
[[ $rounds =~ ^[1-9][0-9]*$ ]] || { echo "bench: --rounds wants a positive whole number, not '$rounds'" >&2; exit 2; }
threads=${THREADS:-$(nproc)}
ref_py=${REF_PY:-../shared/reference/ref.py}
ref_python=${REF_VENV:-$HOME/.venv-ref}/bin/python
ref_models=${REF_MODELS:-../shared/models}
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

# PyTorch on a fixture model: torch_models.py's Jacobian or torch_train_bench.py's training
# figure (one JSON line), or null where torch or the fixtures are missing.
torch_fixture() {
  local kind=$1 name=$2
  if [[ -x $ref_python && -f $ref_models/torch_models.py ]]; then
    case $kind in
      jacobian) "$ref_python" "$ref_models/torch_models.py" bench "$name" --threads "$threads" 2>/dev/null || echo null ;;
      train) "$ref_python" scripts/torch_train_bench.py "$name" --fixtures "$ref_models" --data "$LEAFWALK_DATA" \
               --threads "$threads" 2>/dev/null || echo null ;;
    esac
  else
    echo null
  fi
}

# Revision $baseline's benchmark $2 of crate $1 (empty without --baseline).
baseline_bench() {
  [[ -n $baseline ]] || { echo null; return; }
  local tree=target/bench-baseline/$baseline
  if [[ ! -d $tree ]]; then
    mkdir -p target/bench-baseline
    git worktree add --detach "$tree" "$baseline" >&2 || { echo null; return; }
  fi
  (cd "$tree" && CARGO_TARGET_DIR=$PWD/target cargo bench -q $features -p "$1" --bench "$2") || echo null
}

geometry() {
  local ours base torch
  ours=$(ours leafwalk-geometry jacobian)
  base=$(baseline_bench leafwalk-geometry jacobian)
  torch=$(for m in lenet5 vgg-bn-small resnet-mini; do torch_fixture jacobian "$m"; done | paste -sd, -)
  python3 - "$ours" "$(reference)" "[$torch]" "$base" "$baseline" <<'PY'
import json, sys
ours, ref, fixtures, base, rev = json.loads(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4]), sys.argv[5]
out = {"leafwalk": ours}
best = lambda results: max(v for k, v in results.items() if k.startswith("engine") and k.endswith("points_per_s"))
ratios = {}
if ref:
    torch_best = max(ref[k]["points_per_s"] for k in ("a_jacobian_paper_per_point", "b_jacobian_replicated_batch16", "b_jacobian_replicated_batch128", "b_jacobian_vmap_jacrev_batch128"))
    out["pytorch_reference"] = {k: ref[k] for k in ref if k.startswith(("a_", "b_"))} | {"torch": ref["torch"], "threads": ref["threads"], "device": ref.get("device")}
    ratios["mnist-cnn"] = best(ours["models"]["mnist-cnn"]["results"]) / torch_best
for f in fixtures:
    if f:
        out.setdefault("pytorch_fixtures", {})[f["model"]] = f
        ratios[f["model"]] = best(ours["models"][f["model"]]["results"]) / f["best_points_per_s"]
if ratios:
    out["ratio_best_leafwalk_over_best_pytorch"] = ratios
if base:
    out["baseline"] = {"revision": rev, "bench": base}
    # The baseline's mnist-cnn pass, whatever it called itself ("hand_written_…"), against the engine.
    new = ours["models"]["mnist-cnn"]["results"]
    ratios = {}
    for key, value in base.get("results", {}).items():
        for prefix in ("hand_written_", "engine_"):
            if key.startswith(prefix) and key.endswith("points_per_s") and "engine_" + key[len(prefix):] in new:
                ratios[key[len(prefix):]] = new["engine_" + key[len(prefix):]] / value
    out["ratio_engine_over_baseline_mnist_cnn"] = ratios
print(json.dumps(out))
PY
}

train() {
  local ours base torch
  ours=$(ours leafwalk-train train)
  base=$(baseline_bench leafwalk-train train)
  torch=$(torch_fixture train resnet-mini)
  python3 - "$ours" "$(reference)" "$torch" "$base" "$baseline" <<'PY'
import json, sys
ours, ref, fixture, base, rev = json.loads(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4]), sys.argv[5]
out = {"leafwalk": ours}
ratios = {}
if ref:
    r = ref["d_train_batch60_images_per_s"]
    out["pytorch_reference"] = {"torch": ref["torch"], "threads": ref["threads"], "device": ref.get("device"), "images_per_s": r}
    ratios["mnist-cnn"] = ours["models"]["mnist-cnn"]["images_per_s"] / r
if fixture:
    out["pytorch_resnet_mini"] = fixture
    ratios["resnet-mini"] = ours["models"]["resnet-mini"]["images_per_s"] / fixture["images_per_s"]
if ratios:
    out["ratio_leafwalk_over_pytorch"] = ratios
if base:
    out["baseline"] = {"revision": rev, "bench": base}
print(json.dumps(out))
PY
}

scale() { ours leafwalk-geometry scale; }

import() { ours leafwalk-onnx load; }

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

python() {
  local ours py
  ours=$(LEAFWALK_BENCH_MODELS=lenet5,resnet-mini ours leafwalk-geometry jacobian)
  py=$(target/py-venv/bin/python bindings/python/benches/overhead.py lenet5 resnet-mini)
  python3 - "$ours" "$py" <<'PY'
import json, sys
ours, py = json.loads(sys.argv[1]), json.loads(sys.argv[2])
ratios = {m: py["models"][m]["python_batch64_points_per_s"] / ours["models"][m]["results"]["engine_batch64_points_per_s"]
          for m in py["models"]}
in_process = {m: py["models"][m]["ratio_python_over_engine_in_process"] for m in py["models"]}
print(json.dumps({"engine": ours, "python": py, "ratio_python_over_engine_batch64": ratios,
                  "ratio_python_over_engine_in_process_batch64": in_process}))
PY
}

# `$1` (train, geometry or python) $rounds times, ref.py's figures measured afresh after the first
# round; with more than one round, one line: every round's and each ratio's median.
in_rounds() {
  local lines=()
  for ((round = 0; round < rounds; round++)); do
    ((round == 0)) || : >"$ref_cache"
    lines+=("$("$1")")
  done
  ((rounds == 1)) && { echo "${lines[0]}"; return; }
  printf '%s\n' "${lines[@]}" | python3 -c '
import json, statistics, sys
rounds = [json.loads(line) for line in sys.stdin]
medians = {}
for key in rounds[0]:
    if key.startswith("ratio_"):
        names = rounds[0][key]
        medians[key] = {n: statistics.median(r[key][n] for r in rounds if n in r.get(key, {})) for n in names}
print(json.dumps({"rounds": rounds, "median_over_rounds": medians}))'
}

case $what in
  all) in_rounds train; in_rounds geometry; import; path; ood ;;
  train|geometry) in_rounds "$what" ;;
  python) scripts/python-tests.sh --install-only; in_rounds python ;;
  *) "$what" ;;
esac
