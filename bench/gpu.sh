#!/usr/bin/env bash
# The GPU check and benchmark, one prepared script (meant to take under 5 minutes on a GPU
# machine such as one H200 with 16 cores):
#
#   bash bench/gpu.sh [DATA.hdf5] [OUT_DIR]
#
# 1. A fresh venv ($QUIVER_GPU_VENV, default /tmp/quiver-gpu-venv) with Quiver and a GPU extra:
#    gpu-cu13 (faiss-gpu-cuvs: CUDA 13 driver, cuVS, so CAGRA and GPU filters) first, then
#    gpu-cu12 (faiss-gpu: CUDA 12) if that one sees no GPU. Where no package registry answers,
#    a python already here whose faiss sees a GPU (python3, .venv/bin/python), else it stops,
#    writing OUT_DIR/UNAVAILABLE.txt with the reasons.
# 2. The gpu-marked tests: pytest -m gpu tests/test_gpu.py (OUT_DIR/tests.log).
# 3. `quiver bench` on WordNet (DATA, default shared/data or ../shared/data
#    wordnet-minilm-384-angular.hdf5): Quiver on the GPU (Flat, IVF1024,Flat, IVF1024,PQ48,
#    CAGRA32) against faiss on the CPU (Flat, IVF1024, HNSW16) and Quiver on the CPU
#    (IVF1024,Flat): recall@10, QPS (all cores), build time; OUT_DIR (default
#    bench/results/gpu-wordnet) gets results.json, results.md, recall_qps.png, env.txt, gpu.log.
set -u
cd "$(dirname "$0")/.."
DATA=${1:-}
OUT=${2:-bench/results/gpu-wordnet}
VENV=${QUIVER_GPU_VENV:-/tmp/quiver-gpu-venv}
export NUMBA_CACHE_DIR=${NUMBA_CACHE_DIR:-/tmp/quiver-gpu-numba} OMP_WAIT_POLICY=PASSIVE
mkdir -p "$OUT"
LOG="$OUT/gpu.log"
: > "$LOG"
say() { echo "[gpu.sh $(date +%T)] $*" | tee -a "$LOG" >&2; }
T0=$(date +%s)

if [ -z "$DATA" ]; then
  for c in shared/data/wordnet-minilm-384-angular.hdf5 ../shared/data/wordnet-minilm-384-angular.hdf5; do
    if [ -f "$c" ]; then DATA=$c; break; fi
  done
fi
if [ -z "$DATA" ] || [ ! -f "$DATA" ]; then
  say "no dataset: pass the path of wordnet-minilm-384-angular.hdf5 as the first argument"
  exit 2
fi

# --- 1. an environment with a GPU faiss ---------------------------------------------------
sees_gpu() {  # $1: a python; true when quiver imports and its faiss sees a GPU
  "$1" -c "import quiver, faiss, sys; n = faiss.get_num_gpus(); print('$1: faiss',
faiss.__version__, 'sees', n, 'GPU(s)'); sys.exit(0 if n > 0 else 1)" >>"$LOG" 2>&1
}
PIP_FAST=(--retries 1 --timeout 20 --disable-pip-version-check)
install_extra() {  # $1: extra; faiss-gpu-cuvs pins need a recent pip (26.06.* specifiers)
  timeout "$2" "$VENV/bin/pip" install -q "${PIP_FAST[@]}" -e ".[$1]" h5py threadpoolctl \
    matplotlib pytest hypothesis >>"$LOG" 2>&1 && sees_gpu "$VENV/bin/python"
}
PY="" EXTRA=""
if python3 -m venv "$VENV" >>"$LOG" 2>&1 &&
   timeout 60 "$VENV/bin/pip" install -q "${PIP_FAST[@]}" -U pip >>"$LOG" 2>&1; then
  say "installing quiver[gpu-cu13] into $VENV"
  if install_extra gpu-cu13 170; then
    PY=$VENV/bin/python EXTRA=gpu-cu13
  else
    say "gpu-cu13 sees no GPU or did not install; trying quiver[gpu-cu12]"
    "$VENV/bin/pip" uninstall -y -q faiss-gpu-cuvs >>"$LOG" 2>&1
    if install_extra gpu-cu12 120; then PY=$VENV/bin/python EXTRA=gpu-cu12; fi
  fi
else
  say "no package registry answered (or no venv module)"
fi
if [ -z "$PY" ]; then
  for c in python3 .venv/bin/python; do
    if command -v "$c" >/dev/null 2>&1 && sees_gpu "$c"; then PY=$c EXTRA=preinstalled; break; fi
  done
fi
{
  echo "date: $(date -u +%FT%TZ)"; echo "host: $(hostname)"; echo "extra: ${EXTRA:-none}"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
  [ -n "$PY" ] && "$PY" -c "import faiss, numpy, sys; print('python', sys.version.split()[0]);
print('faiss', faiss.__version__, faiss.get_compile_options(), 'gpus', faiss.get_num_gpus())" 2>&1
  nproc
} > "$OUT/env.txt"
if [ -z "$PY" ]; then
  { echo "No GPU faiss could be set up; nothing was measured."; echo; cat "$OUT/env.txt";
    echo; echo "last lines of $LOG:"; tail -30 "$LOG"; } > "$OUT/UNAVAILABLE.txt"
  say "no GPU faiss: see $OUT/UNAVAILABLE.txt"
  exit 3
fi
say "using $PY ($EXTRA): $(grep "^faiss" "$OUT/env.txt")"

# --- 2. the gpu tests --------------------------------------------------------------------
timeout 100 "$PY" -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider > "$OUT/tests.log" 2>&1
say "gpu tests: exit $? ($(tail -1 "$OUT/tests.log"))"

# --- 3. the benchmark --------------------------------------------------------------------
say "bench on $DATA"
timeout 200 "$PY" -c "import sys; from quiver.cli import main; sys.exit(main(sys.argv[1:]))" \
  bench --dataset "$DATA" \
  --index Flat@cuda --index IVF1024,Flat@cuda --index IVF1024,PQ48@cuda --index CAGRA32@cuda \
  --index IVF1024,Flat --peers faiss,faiss-ivf:1024,faiss-hnsw \
  --nprobe 8,32,128 --ef 32,64,128 --rounds 2 --reps 2 --latency-queries 100 \
  --threads-only all --out "$OUT" >>"$LOG" 2>&1
RC=$?
say "bench: exit $RC, $(( $(date +%s) - T0 )) s in all"
[ -f "$OUT/results.md" ] && cat "$OUT/results.md"
exit $RC
