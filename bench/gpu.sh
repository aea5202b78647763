#!/usr/bin/env bash
# The GPU check and benchmark, one prepared script with one overall deadline (default 280 s,
# under the 5-minute target and the device tool's 600 s per command), e.g. on the lent GPU
# machine: `bash bench/gpu.sh "" "$OUT"`.
#
#   bash bench/gpu.sh [DATA] [OUT_DIR]
#
# DATA: the WordNet file (wordnet-minilm-384-angular.hdf5), or a bench spec
#   synthetic:NxD:metric. Empty: shared/data or ../shared/data, and where that file did not
#   travel with the working tree, $QUIVER_GPU_SYNTHETIC (default synthetic:100000x384:cosine,
#   its exact ground truth on the GPU).
# OUT_DIR: where everything goes (default bench/results/gpu-wordnet, or gpu-synthetic);
#   point it under $OUT on the device machine, which collects only that.
# Environment: QUIVER_GPU_DEADLINE (seconds, default 280), QUIVER_GPU_VENV (default
#   /tmp/quiver-gpu-venv).
#
# 1. A python whose faiss sees a GPU: one already here first (python3, .venv/bin/python; the
#    lent machine may reach no package registry), else a fresh venv with a GPU extra:
#    gpu-cu13 (faiss-gpu-cuvs: CUDA 13 driver, cuVS, so CAGRA and GPU filters), then gpu-cu12
#    (faiss-gpu: CUDA 12) if that one sees no GPU, each only where a registry answers.
#    Quiver is imported from this checkout (a PYTHONPATH shim of its package layout), so no
#    python needs it installed. Without one: OUT_DIR/UNAVAILABLE.txt with the reasons.
# 2. The gpu-marked tests: pytest -m gpu tests/test_gpu.py (OUT_DIR/tests.log).
# 3. `quiver bench`: Quiver on the GPU (Flat, IVF1024,Flat, IVF1024,PQ48, CAGRA32) against
#    faiss on the CPU (Flat, IVF1024, HNSW16) and Quiver on the CPU (IVF1024,Flat): recall@10,
#    QPS (all cores), build time; OUT_DIR gets results.json, results.md, recall_qps.png,
#    env.txt, gpu.log, summary.txt.
# Each step gets what is left of the deadline (less what the later steps need). The exit
# status is 0 only when the tests and the bench both passed: the tests' status where they
# failed, else the bench's (124: a step ran out of time); 3: no GPU python; 2: bad arguments.
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)
T0=$(date +%s)
DEADLINE=$(( T0 + ${QUIVER_GPU_DEADLINE:-280} ))
DATA=${1:-}
OUT_DIR=${2:-}
VENV=${QUIVER_GPU_VENV:-/tmp/quiver-gpu-venv}
export NUMBA_CACHE_DIR=${NUMBA_CACHE_DIR:-/tmp/quiver-gpu-numba} OMP_WAIT_POLICY=PASSIVE

if [ -z "$DATA" ]; then
  for c in shared/data/wordnet-minilm-384-angular.hdf5 ../shared/data/wordnet-minilm-384-angular.hdf5; do
    if [ -f "$c" ]; then DATA=$c; break; fi
  done
fi
SYNTH=0
case "$DATA" in
  synthetic*) SYNTH=1 ;;
  "") DATA=${QUIVER_GPU_SYNTHETIC:-synthetic:100000x384:cosine} SYNTH=2 ;;
  *) if [ ! -f "$DATA" ]; then
       echo "gpu.sh: no dataset file $DATA (a path, or synthetic:NxD:metric)" >&2; exit 2
     fi ;;
esac
if [ -z "$OUT_DIR" ]; then
  if [ "$SYNTH" = 0 ]; then OUT_DIR=bench/results/gpu-wordnet; else OUT_DIR=bench/results/gpu-synthetic; fi
fi
mkdir -p "$OUT_DIR" || exit 2
LOG="$OUT_DIR/gpu.log"
: > "$LOG"
rm -f "$OUT_DIR/UNAVAILABLE.txt"
say() { echo "[gpu.sh $(date +%T) +$(( $(date +%s) - T0 ))s] $*" | tee -a "$LOG" >&2; }
left() { echo $(( DEADLINE - $(date +%s) )); }
budget() {  # $1: the most this step may take, $2: seconds to keep for the steps after it
  local b=$(( $(left) - $2 ))
  [ "$b" -gt "$1" ] && b=$1
  [ "$b" -lt 0 ] && b=0
  echo "$b"
}
within() {  # $1: seconds (none left: skipped, status 124), then the command; timeout 0 would
  local s=$1; shift  # mean no limit at all
  [ "$s" -gt 0 ] || return 124
  timeout -k 5 "$s" "$@"
}
[ "$SYNTH" = 2 ] && say "no WordNet file here (shared/data did not travel?): benching $DATA"
say "deadline ${QUIVER_GPU_DEADLINE:-280} s; data $DATA; output $OUT_DIR"

# Quiver from this checkout for any python: its package-dir layout (pyproject.toml) as links
SHIM=$(mktemp -d /tmp/quiver-shim.XXXXXX)
mkdir "$SHIM/quiver"
ln -s "$ROOT"/src/quiver/* "$SHIM/quiver/"
for p in engine kernels server client bench; do ln -s "$ROOT/$p" "$SHIM/quiver/$p"; done
export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"

PY="" EXTRA=""
unavailable() {  # why no GPU python: OUT_DIR/UNAVAILABLE.txt, whenever the script stops so
  [ -n "$PY" ] && return
  { echo "No GPU faiss could be set up; nothing was measured ($(date -u +%FT%TZ))."; echo
    timeout 10 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
    echo; echo "last lines of $LOG:"; tail -30 "$LOG"; } > "$OUT_DIR/UNAVAILABLE.txt"
}
trap 'unavailable; rm -rf "$SHIM"' EXIT

# --- 1. a python with a GPU faiss -----------------------------------------------------------
sees_gpu() {  # $1: a python, $2: seconds; true when quiver imports and its faiss sees a GPU
  within "$2" "$1" -c "import quiver, faiss, sys; n = faiss.get_num_gpus(); print('$1: faiss',
faiss.__version__, 'sees', n, 'GPU(s)'); sys.exit(0 if n > 0 else 1)" >>"$LOG" 2>&1
}
for c in python3 .venv/bin/python; do
  if command -v "$c" >/dev/null 2>&1 && sees_gpu "$c" "$(budget 30 120)"; then
    PY=$c EXTRA=preinstalled; break
  fi
done
PIP_FAST=(--retries 1 --timeout 15 --disable-pip-version-check)
install_extra() {  # $1: extra, $2: seconds; faiss-gpu-cuvs pins need a recent pip (26.06.*)
  [ "$2" -gt 10 ] || { say "no time left to install $1"; return 1; }
  within "$2" "$VENV/bin/pip" install -q "${PIP_FAST[@]}" -e ".[$1]" h5py threadpoolctl \
    matplotlib pytest hypothesis >>"$LOG" 2>&1 && sees_gpu "$VENV/bin/python" "$(budget 30 120)"
}
if [ -z "$PY" ]; then
  say "no python here sees a GPU through faiss; trying a venv ($VENV)"
  if ! within "$(budget 30 170)" python3 -m venv "$VENV" >>"$LOG" 2>&1; then
    say "no venv module (or no time left)"
  elif ! within "$(budget 20 170)" "$VENV/bin/pip" install -q "${PIP_FAST[@]}" -U pip \
      >>"$LOG" 2>&1; then
    say "no package registry answered (pip install -U pip failed or timed out)"
  else
    say "installing quiver[gpu-cu13]"
    if install_extra gpu-cu13 "$(budget 150 150)"; then
      PY=$VENV/bin/python EXTRA=gpu-cu13
    else
      say "gpu-cu13 sees no GPU or did not install; trying quiver[gpu-cu12]"
      within "$(budget 20 150)" "$VENV/bin/pip" uninstall -y -q faiss-gpu-cuvs >>"$LOG" 2>&1
      if install_extra gpu-cu12 "$(budget 120 150)"; then PY=$VENV/bin/python EXTRA=gpu-cu12; fi
    fi
  fi
fi
{
  echo "date: $(date -u +%FT%TZ)"; echo "host: $(hostname)"; echo "extra: ${EXTRA:-none}"
  echo "data: $DATA"
  within 15 nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap \
    --format=csv,noheader 2>&1
  [ -n "$PY" ] && within "$(budget 20 90)" "$PY" -c "import faiss, numpy, sys; print('python', sys.version.split()[0]);
print('faiss', faiss.__version__, faiss.get_compile_options(), 'gpus', faiss.get_num_gpus())" 2>&1
  nproc
} > "$OUT_DIR/env.txt"
if [ -z "$PY" ]; then
  say "no GPU faiss: see $OUT_DIR/UNAVAILABLE.txt"
  exit 3
fi
say "using $PY ($EXTRA): $(grep "^faiss" "$OUT_DIR/env.txt")"

# --- 2. the gpu tests -----------------------------------------------------------------------
B=$(budget 100 90)
if [ "$B" -gt 0 ]; then
  within "$B" "$PY" -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider \
    > "$OUT_DIR/tests.log" 2>&1
  TESTS_RC=$?
else
  echo "no time left for the tests" > "$OUT_DIR/tests.log"; TESTS_RC=124
fi
say "gpu tests: exit $TESTS_RC in <= $B s ($(tail -1 "$OUT_DIR/tests.log"))"

# --- 3. the benchmark -----------------------------------------------------------------------
B=$(budget 600 5)
[ "$SYNTH" != 0 ] && export QUIVER_GT_DEVICE=cuda  # its exact ground truth: a GPU Flat search
if [ "$B" -gt 20 ]; then
  say "bench on $DATA ($B s left for it)"
  within "$B" "$PY" -c "import sys; from quiver.cli import main; sys.exit(main(sys.argv[1:]))" \
    bench --dataset "$DATA" \
    --index Flat@cuda --index IVF1024,Flat@cuda --index IVF1024,PQ48@cuda --index CAGRA32@cuda \
    --index IVF1024,Flat --peers faiss,faiss-ivf:1024,faiss-hnsw \
    --nprobe 8,32,128 --ef 32,64,128 --rounds 2 --reps 2 --latency-queries 100 \
    --threads-only all --out "$OUT_DIR" >>"$LOG" 2>&1
  BENCH_RC=$?
else
  say "no time left for the bench"; BENCH_RC=124
fi
say "bench: exit $BENCH_RC, $(( $(date +%s) - T0 )) s in all"
RC=$TESTS_RC
[ "$RC" = 0 ] && RC=$BENCH_RC
printf 'tests: %s\nbench: %s\nexit: %s\nseconds: %s\n' "$TESTS_RC" "$BENCH_RC" "$RC" \
  "$(( $(date +%s) - T0 ))" > "$OUT_DIR/summary.txt"
[ -f "$OUT_DIR/results.md" ] && cat "$OUT_DIR/results.md"
exit "$RC"
