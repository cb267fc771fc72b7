#!/usr/bin/env bash
# The GPU check, for a machine with a GPU and no internet (at most 8 minutes):
#   scripts/gpu_check.sh            (from anywhere; it runs in the repository)
# Expects Python 3.12 with CuPy, NumPy, mpi4py (and torch for the baseline) installed, and
# the wheels built by scripts/build_wheels.py in .whl/ (README, "GPU clusters"): chainer and
# chainercv, plus any of pyyaml, pillow, matplotlib, filelock, protobuf, typing_extensions,
# six, pytest, simplejpeg and opencv-python-headless that the machine lacks. It makes a venv
# that sees the system packages, installs into it only what is missing, from .whl/ alone,
# and then:
#   1. pytest -m gpu          the GPU-marked tests (tests/test_gpu.py)
#   2. launch.train device=0  a short training on the embedded default, float32 and mixed16
#   3. launch.benchmark       ResNet-50 training img/s on one GPU, beside PyTorch's
#                             ResNet-50 (scripts/compare_pytorch.py) on the same GPU
# and prints a summary. Exit status: 0 all passed, 1 a step failed, 2 cannot start.
# Settings: PYTHON (python3), WHEELS (.whl), VENV (/tmp/gpu_check_venv), OUT (/tmp/gpu_check).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}
VENV=${VENV:-/tmp/gpu_check_venv}
OUT=${OUT:-/tmp/gpu_check}
CROP=224
BATCH=64

die() { echo "gpu_check: $*" >&2; exit 2; }

command -v "$PYTHON" >/dev/null 2>&1 || die "no Python interpreter '$PYTHON'; set PYTHON=/path/to/python3.12"
gpu=$("$PYTHON" - 2>&1 <<'PY'
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
print('{} GPU(s), GPU 0: {}, CuPy {}'.format(n, name.decode() if isinstance(name, bytes)
                                             else name, cupy.__version__))
PY
) || die "no GPU visible: ${gpu##*$'\n'}"
echo "gpu_check: $gpu"

# --- set-up: a venv over the system packages; only what is missing, only from $WHEELS --------
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv --system-site-packages "$VENV" || die "cannot create the venv $VENV"
fi
PY="$VENV/bin/python"
pip=("$PY" -m pip --quiet --disable-pip-version-check install --no-index --find-links "$WHEELS")
for pinned in chainer==7.8.1 chainercv==0.13.1; do
  name=${pinned%%==*}
  if [ "$("$PY" -c "import importlib.metadata as m; print(m.version('$name'))" 2>/dev/null)" != "${pinned##*==}" ]; then
    wheel=$(ls "$WHEELS/$name-${pinned##*==}-py3-none-any.whl" 2>/dev/null) \
      || die "$WHEELS/$name-${pinned##*==}-py3-none-any.whl is missing; build it where there is internet (python scripts/build_wheels.py --dest .whl) and copy .whl/ here"
    "${pip[@]}" --no-deps "$wheel" || die "installing $wheel failed"
  fi
done
# import name:distribution, for what chainer 7.8.1, chainercv, the product and the tests need
for pair in yaml:pyyaml PIL:pillow matplotlib:matplotlib filelock:filelock \
            google.protobuf:protobuf typing_extensions:typing_extensions six:six pytest:pytest \
            simplejpeg:simplejpeg cv2:opencv-python-headless; do
  "$PY" -c "import ${pair%%:*}" 2>/dev/null && continue
  "${pip[@]}" "${pair##*:}" \
    || die "${pair##*:} is missing and not in $WHEELS; fetch it where there is internet: pip download --only-binary :all: --python-version 3.12 --platform manylinux2014_x86_64 -d .whl ${pair##*:}"
done
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} PYTHONPATH=$PWD
mkdir -p "$OUT"

# --- the steps: each one timed out on its own, its log kept in $OUT -----------------------
declare -A STATUS
step() {  # step NAME SECONDS command...
  local name=$1 limit=$2; shift 2
  echo "gpu_check: $name (at most ${limit}s)"
  if timeout "$limit" "$@" >"$OUT/$name.log" 2>&1; then STATUS[$name]=ok
  else STATUS[$name]="FAILED (exit $?; see $OUT/$name.log)"; tail -n 15 "$OUT/$name.log"; fi
}

step tests 150 "$PY" -m pytest -m gpu -p no:cacheprovider -q -rs tests
step train_float32 90 "$PY" -m launch.train -c configs/smoke.yaml device=0 train.epochs=2 \
  train.progress=false out="$OUT/train_float32"
step train_mixed16 75 "$PY" -m launch.train -c configs/smoke.yaml device=0 train.epochs=2 \
  train.dtype=mixed16 train.progress=false out="$OUT/train_mixed16"
step benchmark 75 "$PY" -m launch.benchmark device=0 crop_size=$CROP batch_size=$BATCH \
  iterations=20 warmup=3 pipeline_images=48 pipeline_rounds=3 out="$OUT/benchmark"
step pytorch 60 "$PY" - "$CROP" "$BATCH" <<'PY'
"""PyTorch ResNet-50 training img/s on GPU 0, the shape and batch of the benchmark."""
import json
import sys
import time

import torch

sys.path.insert(0, 'scripts')
from compare_pytorch import resnet50  # noqa: E402

crop, batch = int(sys.argv[1]), int(sys.argv[2])
model = resnet50(12).cuda()
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
x = torch.randn(batch, 3, crop, crop, device='cuda')
t = torch.randint(0, 12, (batch,), device='cuda')
result = {}
for mode in ('float32', 'amp_float16'):
    for i in range(23):
        if i == 3:
            torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast('cuda', dtype=torch.float16, enabled=mode != 'float32'):
            loss = torch.nn.functional.cross_entropy(model(x), t)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    torch.cuda.synchronize()
    result[mode] = 20 * batch / (time.perf_counter() - start)
print(json.dumps(result))
PY

# --- summary ------------------------------------------------------------------------------
echo
echo "gpu_check summary ($gpu)"
for name in tests train_float32 train_mixed16 benchmark pytorch; do
  printf '  %-14s %s\n' "$name" "${STATUS[$name]}"
done
grep -h -E '^[0-9]+ (passed|failed)|passed|failed' "$OUT/tests.log" | tail -n 1 | sed 's/^/  tests: /'
for run in train_float32 train_mixed16; do
  grep -h -E 'test accuracy|images/s' "$OUT/$run.log" | tail -n 1 | sed "s/^/  $run: /"
done
"$PY" - "$OUT" "$CROP" "$BATCH" <<'PY'
import json
import os
import sys

out, crop, batch = sys.argv[1], sys.argv[2], sys.argv[3]
try:
    with open(os.path.join(out, 'benchmark', 'benchmark.json')) as f:
        bench = json.load(f)
    product = bench.get('images_per_sec') or bench.get('training', {}).get('images_per_sec')
except (OSError, ValueError):
    product = None
torch_line = ''
try:
    with open(os.path.join(out, 'pytorch.log')) as f:
        torch_line = [line for line in f if line.startswith('{')][-1]
    torch = json.loads(torch_line)
except (OSError, IndexError, ValueError):
    torch = {}
print('  ResNet-50 training, {} px, batch {}, one GPU:'.format(crop, batch))
print('    product (chainer, float32)  {}'.format(
    '{:.1f} img/s'.format(product) if product else 'n/a'))
for mode, value in torch.items():
    ratio = ' (product = {:.2f}x)'.format(product / value) if product else ''
    print('    PyTorch {:<19} {:.1f} img/s{}'.format(mode, value, ratio))
PY
# The benchmark's own table: step parts, allreduce, input pipeline on this machine's cores.
sed -n '/^ResNet training/,/^written to/p' "$OUT/benchmark.log" | grep -v '^written to' \
  | sed 's/^/  /'
for name in "${!STATUS[@]}"; do [ "${STATUS[$name]}" = ok ] || exit 1; done
exit 0
