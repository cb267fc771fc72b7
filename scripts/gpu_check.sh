#!/usr/bin/env bash
# The GPU check: the product's GPU path on a GPU machine without internet, in at most
# 8 minutes with the machine's start (the steps' limits add up to 6.5 minutes).
#
#   scripts/gpu_check.sh            on the GPU machine; exit 0 all passed, 1 a step failed,
#                                   2 it cannot start (no GPU, no wheel set: one line says so)
#   scripts/gpu_check.sh --dry-run  on a CPU: resolve and install the wheel set with a
#                                   Python 3.12, import and start what the check runs with the
#                                   GPU stood in for, print the plan; exit 0 when all of that works
#   scripts/gpu_check.sh --plan     print the steps and their time limits only
#
# The machine it is made for (the lent H100/H200 machines): Python 3.12 with torch, CuPy 14
# (cupy-cuda13x), NumPy 2, pytest, OpenCV, Pillow, PyYAML, matplotlib; no chainer, no
# simplejpeg, no MPI runtime (its mpi4py finds no libmpi). `make gpu-wheels` puts what it
# lacks in .whl/ (scripts/build_wheels.py --gpu-set: chainer, chainercv, simplejpeg, mpich's
# wheel, which holds libmpi and mpiexec, mpi4py and the cuDNN frontend, ~27 MiB); carry .whl/
# with the tree.
#
# Settings (environment):
#   PYTHON  the machine's Python (python3); for --dry-run, a Python 3.12 (found as CI finds it)
#   WHEELS  the wheel set (.whl)
#   LOGS    small files only, at most 8 (what a GPU lease brings back): setup.log, tests.log,
#           train.log, bench.log, summary.txt, compare.json ($OUT when set, else $WORK/logs);
#           a step appends to the log named by its name's first word (train_mixed16: train.log)
#   WORK    big files: the installed wheels, MPI, models, checkpoints (~300 MB), benchmark
#           results, CuPy's kernel cache, the generated images (/tmp/gpu_check)
#   TF32    the comparison's float32: 1 (default), GEMMs and convolutions in TF32 on both sides
#           (CUPY_TF32=1; PyTorch's allow_tf32 for cuDNN and matmuls); 0, strict float32 on both
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
WHEELS=${WHEELS:-.whl}
WORK=${WORK:-/tmp/gpu_check}
LOGS=${LOGS:-${OUT:-$WORK/logs}}
TF32=${TF32:-1}
MODE=run
case "${1:-}" in
  '') ;;
  --dry-run) MODE=dry ;;
  --plan) MODE=plan ;;
  -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) echo "gpu_check: unknown argument '$1'; use --dry-run, --plan or nothing (--help)" >&2
     exit 2 ;;
esac
[ "$TF32" = 0 ] || [ "$TF32" = 1 ] || { echo "gpu_check: TF32 must be 0 or 1, not '$TF32'" >&2; exit 2; }

die() { echo "gpu_check: $*" >&2; exit 2; }

# --- the plan: step name, limit in seconds, what it runs; the run and --plan read it -------
# 390 s in all at most: a lease's 8 minutes less the machine's start.
BATCHES="32 64 256"
CROP=224
PLAN=(
  "tests 60 pytest -m gpu: the GPU-marked tests (CuPy 14 kernels, mixed16, pure_nccl)"
  "train_float32 40 launch.train, embedded default, GPU 0, float32, 1 epoch"
  "train_mixed16 40 launch.train, embedded default, GPU 0, mixed16, 1 epoch"
  "train_2ranks 25 mpiexec -n 2 launch.train: 1 epoch, one GPU per rank where there are 2, else a quarter of an epoch on the CPU (the carried MPI runtime)"
  # Issue 21 (the cuDNN path): its numerics and speed step(s) here, within the 120 s that
  # the steps above and below leave of the 390 s (tests/system/test_gpu_check.py holds the total).
  "cudnn 120 scripts/cudnn_check.py: train.conv_bn=cudnn against chainer's path and PyTorch: ResNet-50's convolutions and BatchNorm, 10 steps' losses, img/s at batch 256"
  "bench_product 75 launch.benchmark device=0, ${CROP} px, float32 and mixed16 at batch ${BATCHES// /, }"
  "bench_pytorch 30 PyTorch ResNet-50, the same shapes, float32 and AMP (compare_pytorch.py --gpu)"
)

plan() {
  local entry total=0
  echo "gpu_check: the plan (TF32=$TF32; logs in $LOGS, big files in $WORK):"
  for entry in "${PLAN[@]}"; do
    read -r name limit what <<<"$entry"
    printf '  %-14s at most %3ss  %s\n' "$name" "$limit" "$what"
    total=$((total + limit))
  done
  echo "  then the summary ($LOGS/summary.txt) and the comparison ($LOGS/compare.json)"
  echo "  steps at most ${total}s in all, plus the wheel install (~10 s)"
}

if [ "$MODE" = plan ]; then plan; exit 0; fi

# --- the interpreter ----------------------------------------------------------------------
# A Python 3.12 that runs, as .ci/run's find_python finds one: PATH, then pyenv's versions.
find_python312() {
  local candidate
  for candidate in python3.12 $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12.*/bin/python3.12 2>/dev/null | sort -rV); do
    if "$candidate" -c 'import sys' >/dev/null 2>&1; then command -v "$candidate"; return; fi
  done
}
if [ "$MODE" = dry ]; then
  PYTHON=${PYTHON:-$(find_python312)}
  [ -n "$PYTHON" ] || die "--dry-run needs a Python 3.12 (the GPU machines' version) and none was found on PATH or in pyenv; install one (pyenv install 3.12) or set PYTHON=/path/to/python3.12"
else
  PYTHON=${PYTHON:-python3}
fi
command -v "$PYTHON" >/dev/null 2>&1 || die "no Python interpreter '$PYTHON'; set PYTHON=/path/to/python3.12"
version=$("$PYTHON" -c 'import sys; print("{}.{}".format(*sys.version_info))')
[ "$MODE" = run ] || [ "$version" = 3.12 ] || die "PYTHON=$PYTHON is Python $version; the dry run stands in for the GPU machines' Python 3.12"

# The GPU, first: a machine without one stops here, in one line.
probe_gpu() {
  "$PYTHON" - 2>&1 <<'PY'
try:
    import cupy
except ImportError as e:
    raise SystemExit('CuPy cannot be imported ({}); this check needs a GPU machine with '
                     'CuPy (cupy-cuda12x or cupy-cuda13x)'.format(e))
try:
    n = cupy.cuda.runtime.getDeviceCount()
except Exception as e:
    raise SystemExit('CuPy {} sees no GPU ({}: {})'.format(cupy.__version__,
                                                            type(e).__name__, e))
if n == 0:
    raise SystemExit('CuPy {} sees no GPU (CUDA_VISIBLE_DEVICES empty?)'.format(
        cupy.__version__))
name = cupy.cuda.runtime.getDeviceProperties(0)['name']
print('{} {} CuPy {}'.format(n, name.decode() if isinstance(name, bytes) else name,
                             cupy.__version__))
PY
}

# --- the GPU stood in for (--dry-run only) ------------------------------------------------
# The image's packages that the check imports, from PyPI for Python 3.12 (versions as in
# requirements.txt), in a folder of their own; torch (2+ GB) is left out: only
# compare_pytorch.py's syntax is checked. CuPy is a stand-in package of a few lines: version
# 14.2.0 (so distributed.compat takes its CuPy 14 path), cupy.cuda.nccl warning as CuPy 14.2
# does without libnccl, and getDeviceCount failing as CUDA does on a machine with no GPU. The
# real CuPy 14 wheel (and NVRTC) is what `make cuda-check` tests the GPU path against; here
# the question is the wheel set and this script, so the stand-in keeps the dry run light.
IMAGE_PACKAGES=(numpy pyyaml pillow matplotlib opencv-python-headless pytest filelock protobuf
                typing_extensions six 'setuptools<81')
stand_in() {
  local specs=() name line
  for name in "${IMAGE_PACKAGES[@]}"; do
    line=$(grep -E "^${name}([=<>~! ]|$)" requirements.txt | head -n 1)
    specs+=("${line:-$name}")
  done
  echo "gpu_check: the image stood in for: ${specs[*]} (Python $version, into $WORK/image)"
  "$PYTHON" -m pip install --quiet --disable-pip-version-check --only-binary :all: \
    --target "$WORK/image" "${specs[@]}" >"$LOGS/image.log" 2>&1 \
    || die "installing the image's stand-in failed; see $LOGS/image.log"
  mkdir -p "$WORK/standin/cupy/cuda"
  cat >"$WORK/standin/cupy/__init__.py" <<'PY'
"""A stand-in for CuPy 14.2 on a machine without a GPU (scripts/gpu_check.sh --dry-run)."""
from cupy import cuda  # noqa: F401
__version__ = '14.2.0'
PY
  cat >"$WORK/standin/cupy/cuda/__init__.py" <<'PY'
from cupy.cuda import runtime  # noqa: F401
PY
  cat >"$WORK/standin/cupy/cuda/runtime.py" <<'PY'
class CUDARuntimeError(RuntimeError):
    pass


def getDeviceCount():
    raise CUDARuntimeError('cudaErrorNoDevice: no CUDA-capable device is detected')
PY
  cat >"$WORK/standin/cupy/cuda/nccl.py" <<'PY'
import warnings
available = False
warnings.warn('nccl library could not be loaded.')
PY
}

# --- set-up: the wheel set into $WORK, nothing into the machine's Python -------------------
install() {
  [ -d "$WHEELS" ] || die "$WHEELS: no wheel set here; build it where there is internet (make gpu-wheels) and carry .whl/ with the repository"
  local checked
  checked=$("$PYTHON" scripts/build_wheels.py --check --dest "$WHEELS" 2>&1) || die "${checked##*$'\n'}"
  echo "$checked" | sed 's/^/gpu_check: /'
  rm -rf "$WORK/site" "$WORK/mpi"
  local wheels=() name
  for name in chainer chainercv simplejpeg mpi4py nvidia_cudnn_frontend; do
    wheels+=("$WHEELS"/"$name"-*.whl)
  done
  # Compiled at install: each later import then neither recompiles nor repeats chainercv's
  # SyntaxWarnings.
  local pip=("$PYTHON" -m pip --quiet --disable-pip-version-check install --no-index --no-deps)
  "${pip[@]}" --target "$WORK/site" "${wheels[@]}" >>"$LOGS/setup.log" 2>&1 \
    || die "installing ${wheels[*]} into $WORK/site failed; see $LOGS/setup.log"
  # --prefix, not --target: pip --target drops the data a wheel puts under lib/ (mpich's
  # libmpi.so.12) when the target's own lib/ holds Python packages.
  "${pip[@]}" --prefix "$WORK/mpi" "$WHEELS"/mpich-*.whl >>"$LOGS/setup.log" 2>&1 \
    || die "installing MPICH's wheel into $WORK/mpi failed; see $LOGS/setup.log"
  [ -f "$WORK/mpi/lib/libmpi.so.12" ] || die "MPICH's wheel left no $WORK/mpi/lib/libmpi.so.12"
  PYTHONPATH=$WORK/site${EXTRA_PATH:+:$EXTRA_PATH}:$REPO
  # mpi4py 4 loads libmpi at run time: point it at the carried MPICH.
  export PYTHONPATH MPI4PY_LIBMPI=$WORK/mpi/lib/libmpi.so.12 PATH=$WORK/mpi/bin:$PATH
}

# What the check imports, and where each comes from: one line per module, or one line
# naming what is missing and what to do.
check_imports() {
  "$PYTHON" - "$WORK" "$@" <<'PY'
import importlib
import os
import sys

work, skip = sys.argv[1], set(sys.argv[2:])
# distributed first: it applies the compat shims that chainer needs before its import.
modules = ['distributed', 'numpy', 'cupy', 'yaml', 'PIL', 'cv2', 'matplotlib', 'pytest',
           'filelock', 'google.protobuf', 'six', 'simplejpeg', 'mpi4py.MPI', 'cudnn', 'chainer',
           'chainermn', 'chainercv', 'distributed.trainer', 'distributed.bench', 'launch.train',
           'launch.benchmark', 'torch']
places = [(os.path.join(work, 'site'), 'carried (the wheel set)'),
          (os.path.join(work, 'image'), "the image's stand-in"),
          (os.path.join(work, 'standin'), 'stand-in'), (os.getcwd(), 'the repository')]
missing = []
for name in modules:
    if name in skip:
        print('  {:<20} stood in: not installed here'.format(name))
        continue
    try:
        module = importlib.import_module(name)
    except Exception as e:
        if name == 'torch':  # only the PyTorch side of the comparison needs it
            print('  {:<20} cannot be imported ({}): bench_pytorch will fail'.format(name, e))
            continue
        missing.append('{} ({}: {})'.format(name, type(e).__name__, str(e).splitlines()[0]))
        continue
    top = sys.modules[name.split('.')[0]]
    where = getattr(module, '__file__', '') or ''
    origin = next((what for place, what in places if where.startswith(place + os.sep)),
                  'the machine')
    version = getattr(module, '__version__', '') or getattr(top, '__version__', '')
    if name == 'mpi4py.MPI':
        version += ', ' + module.Get_library_version().splitlines()[0].strip()
    print('  {:<20} {:<40} {}'.format(name, version, origin))
if missing:
    sys.exit('cannot import {}: install it on this machine, or carry it as a wheel (add it to '
             'GPU_IMAGE_LACKS in scripts/build_wheels.py, then make gpu-wheels)'.format(
                 '; '.join(missing)))
import chainer  # noqa: E402
print('  chainer.cuda.available={}, cudnn_enabled={}'.format(
    chainer.backends.cuda.available, chainer.backends.cuda.cudnn_enabled))
PY
}

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} CUPY_CACHE_DIR=$WORK/cupy_cache \
  DISTRIBUTED_CACHE=$WORK/cache MPLBACKEND=Agg PYTHONUNBUFFERED=1

if [ "$MODE" = dry ]; then
  mkdir -p "$LOGS" "$WORK" || die "cannot create $LOGS or $WORK"
  echo "gpu_check: dry run with $("$PYTHON" --version 2>&1) ($PYTHON)"
  make -s gpu-wheels || die "make gpu-wheels failed (it needs PyPI)"
  stand_in
  EXTRA_PATH=$WORK/image:$WORK/standin
  install
  echo "gpu_check: the GPU probe, as the real run starts:"
  if probed=$(probe_gpu); then die "the GPU probe found a GPU behind the stand-in: $probed"; fi
  echo "  ${probed##*$'\n'} -> the real run would stop here with exit 2"
  echo "gpu_check: imports, as the check's steps make them:"
  check_imports torch >"$LOGS/imports.log" 2>"$LOGS/imports.err" \
    || die "$(tail -n 1 "$LOGS/imports.err")"
  cat "$LOGS/imports.log"
  "$PYTHON" -m py_compile scripts/compare_pytorch.py || die "scripts/compare_pytorch.py does not compile on Python $version"
  echo "gpu_check: pytest -m gpu collects (the tests step):"
  timeout 120 "$PYTHON" -m pytest -m gpu --collect-only -q -p no:cacheprovider tests \
    >"$LOGS/collect.log" 2>&1 || die "pytest -m gpu does not collect; see $LOGS/collect.log"
  tail -n 1 "$LOGS/collect.log" | sed 's/^/  /'
  echo "gpu_check: 2 ranks through the carried mpiexec and mpi4py (launch.benchmark on the CPU):"
  timeout 120 mpiexec -n 2 "$PYTHON" -m launch.benchmark device=cpu crop_size=32 batch_size=2 \
    iterations=1 warmup=1 allreduce_rounds=1 pipeline_images=0 dtype=mixed16 \
    out="$WORK/dry_bench" >"$LOGS/dry_bench.log" 2>&1 \
    || die "2 ranks of launch.benchmark failed; see $LOGS/dry_bench.log"
  grep -m 1 '^ResNet training' "$LOGS/dry_bench.log" | sed 's/^/  /'
  plan
  echo "gpu_check: dry run passed: the real run needs only a GPU"
  exit 0
fi

gpu=$(probe_gpu) || die "no GPU visible: ${gpu##*$'\n'}"
read -r GPUS GPU_NAME <<<"${gpu##*$'\n'}"
echo "gpu_check: $GPUS GPU(s), GPU 0: $GPU_NAME"
mkdir -p "$LOGS" "$WORK" || die "cannot create $LOGS or $WORK"
: >"$LOGS/setup.log"
install
echo "gpu_check: imports:"
check_imports 2>>"$LOGS/setup.log" | tee -a "$LOGS/setup.log" \
  || die "$(tail -n 1 "$LOGS/setup.log")"
PY=$PYTHON
# The embedded default's images, made once here rather than inside the first training's limit.
"$PY" -c 'import distributed.data.minisop as m; print("  minisop:", m.ensure_minisop())' \
  2>>"$LOGS/setup.log" | tee -a "$LOGS/setup.log" || die "making minisop failed; see $LOGS/setup.log"

# --- the steps: each one timed out on its own, its log in $LOGS ----------------------------
step_tests() {
  "$PY" -m pytest -m gpu -p no:cacheprovider -q -rs tests
}
train() {  # train NAME OVERRIDES...: the embedded default, its results in $WORK/NAME
  local name=$1; shift
  rm -rf "${WORK:?}/$name"
  $LAUNCH "$PY" -m launch.train -c configs/smoke.yaml train.progress=false out="$WORK/$name" "$@"
}
step_train_float32() {
  LAUNCH='' train train_float32 device=0 train.epochs=1
}
step_train_mixed16() {
  LAUNCH='' train train_mixed16 device=0 train.epochs=1 train.dtype=mixed16
}
step_train_2ranks() {
  if [ "$GPUS" -ge 2 ]; then
    echo "2 GPUs: one rank on each"
    LAUNCH='mpiexec -n 2' train train_2ranks device=auto train.epochs=1
  else
    echo "one GPU, and the product runs one rank per GPU: 2 ranks on the CPU"
    LAUNCH='mpiexec -n 2' train train_2ranks device=cpu train.epochs=0.25
  fi
}
step_bench_product() {
  local precision batch failed=0 extra
  # TF32 for the comparison only: the tests and trainings above run CuPy's default, float32.
  export CUPY_TF32=$TF32
  for precision in float32 mixed16; do
    for batch in $BATCHES; do
      # The input pipeline on this machine's cores, once.
      extra=pipeline_images=0
      [ "$precision$batch" = float3264 ] && extra="pipeline_images=32 pipeline_rounds=2"
      echo "== product $precision batch $batch"
      "$PY" -m launch.benchmark device=0 dtype=$precision crop_size=$CROP batch_size=$batch \
        iterations=4 warmup=1 allreduce_rounds=1 $extra out="$WORK/bench/${precision}_b$batch" \
        || failed=1
    done
  done
  return $failed
}
step_cudnn() {
  # Unbuffered: a step cut at its limit keeps the parts it printed.
  "$PY" -u scripts/cudnn_check.py --batches 256 --steps 10 --timed 3 --numerics-batch 4 \
    --tf32 "$TF32" --out "$WORK/cudnn.json"
}
step_bench_pytorch() {
  "$PY" scripts/compare_pytorch.py --gpu --crop $CROP --batches $BATCHES --iterations 8 \
    --warmup 2 --tf32 "$TF32" --out "$WORK/bench"
}
export -f step_tests train step_train_float32 step_train_mixed16 step_train_2ranks \
  step_cudnn step_bench_product step_bench_pytorch
export PY WORK GPUS BATCHES CROP TF32
rm -rf "$WORK/bench"

declare -A STATUS STARTED
NAMES=()
for entry in "${PLAN[@]}"; do
  read -r name limit _ <<<"$entry"
  NAMES+=("$name")
  log=$LOGS/${name%%_*}.log
  [ -n "${STARTED[$log]:-}" ] || : >"$log"
  STARTED[$log]=1
  echo "gpu_check: $name (at most ${limit}s)"
  echo "==== $name" >>"$log"
  start=$SECONDS
  if timeout "$limit" bash -c "step_$name" >>"$log" 2>&1; then
    STATUS[$name]="ok ($((SECONDS - start))s)"
  else
    code=$?
    [ $code = 124 ] && why="timed out after ${limit}s" || why="exit $code"
    STATUS[$name]="FAILED ($why; see $log)"
    tail -n 15 "$log"
  fi
done

# --- summary: $LOGS/summary.txt --------------------------------------------------------------
{
  echo "gpu_check summary: $GPUS GPU(s), GPU 0: $GPU_NAME; TF32=$TF32"
  for name in "${NAMES[@]}"; do printf '  %-14s %s\n' "$name" "${STATUS[$name]}"; done
  grep -h -E '[0-9]+ (passed|failed|skipped|error)' "$LOGS/tests.log" | tail -n 1 | sed 's/^/  tests: /'
  for run in train_float32 train_mixed16 train_2ranks; do
    sed -n "/^==== $run\$/,/^==== /p" "$LOGS/train.log" | grep -E 'images/s on' | tail -n 1 \
      | sed "s/^/  $run: /"
  done
  "$PY" scripts/compare_pytorch.py --summary "$WORK/bench" --tf32 "$TF32" --batches $BATCHES \
    2>&1 \
    && cp "$WORK/bench/compare.json" "$LOGS/compare.json"
  # The product's own table once (allreduce, input pipeline on this machine's cores).
  awk '/^== product/ { mine = /float32 batch 64$/ } mine && /^ResNet training/ { table = 1 }
       /^written to/ { table = 0 } mine && table' "$LOGS/bench.log"
} 2>&1 | tee "$LOGS/summary.txt"
for name in "${NAMES[@]}"; do [ "${STATUS[$name]:0:2}" = ok ] || exit 1; done
exit 0
