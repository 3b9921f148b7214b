#!/usr/bin/env bash
# Crash safety of training: kill -9 a run at KILLS random moments, resume it after each, and
# compare its final weights with an uninterrupted run's bit for bit — by the tensor digest
# (leafwalk.sha256) every checkpoint carries; the files' own bytes differ in metadata order.
#
#   scripts/soak.sh [KILLS] [SEED]      # default 10 kills, seed 1; needs scripts/fetch-data.sh's MNIST
#
# Environment: LEAFWALK (the binary, default target/release/leafwalk), LEAFWALK_DATA (default data).
# Prints one JSON line; exits 1 if the weights differ.
set -euo pipefail
cd "$(dirname "$0")/.."
kills=${1:-10}
RANDOM=${2:-1}
bin=${LEAFWALK:-target/release/leafwalk}
root=${LEAFWALK_DATA:-data}
[[ -x $bin ]] || { echo "soak: $bin not found; run cargo build --release first" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The paper's network for 3 epochs (402 steps), resume state saved every 20 steps.
args=(train --arch mnist-cnn --dataset mnist --epochs 3 --batch-size 60 --seed 7 --threads 2
  --checkpoint-every 20 --reference-size 0 --min-accuracy 0 --data-root "$root")
digest() {
  python3 -c 'import json, struct, sys
with open(sys.argv[1], "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    print(json.loads(f.read(n))["__metadata__"]["leafwalk.sha256"])' "$1"
}

started=$(date +%s%N)
"$bin" "${args[@]}" --out "$work/straight" >/dev/null 2>&1
straight_ms=$((($(date +%s%N) - started) / 1000000))
reference=$(digest "$work/straight/epoch-03.safetensors")

killed=0 sessions=0 finished_early=0
while ((killed < kills)); do
  resume=()
  [[ -f $work/killed/resume.safetensors ]] && resume=(--resume)
  "$bin" "${args[@]}" "${resume[@]}" --out "$work/killed" >/dev/null 2>&1 &
  pid=$!
  sessions=$((sessions + 1))
  # A moment between 0.5 s and a fifth of the whole run after the start (data loading included).
  delay_ms=$((500 + RANDOM % (straight_ms / 5 + 1)))
  sleep "$(printf '%d.%03d' $((delay_ms / 1000)) $((delay_ms % 1000)))"
  if kill -9 "$pid" 2>/dev/null; then
    killed=$((killed + 1))
  fi
  wait "$pid" 2>/dev/null || true
  if [[ -f $work/killed/epoch-03.safetensors ]]; then
    finished_early=1
    break
  fi
done
# A kill during a write can leave its hidden temporary file (.NAME.PID.tmp) — never a partial
# checkpoint under the real name; counted, not judged.
leftovers=$(find "$work/killed" -name '*.tmp' | wc -l)
if [[ ! -f $work/killed/epoch-03.safetensors ]]; then
  "$bin" "${args[@]}" --resume --out "$work/killed" >/dev/null 2>&1
fi
final=$(digest "$work/killed/epoch-03.safetensors")
same=false
[[ $final == "$reference" ]] && same=true
printf '{"kills": %d, "sessions": %d, "finished_before_last_kill": %s, "uninterrupted_ms": %d, "temporary_files_left": %d, "reference_digest": "%s", "final_digest": "%s", "bit_identical": %s}\n' \
  "$killed" "$sessions" "$([[ $finished_early == 1 ]] && echo true || echo false)" "$straight_ms" "$leftovers" "$reference" "$final" "$same"
[[ $same == true ]]
