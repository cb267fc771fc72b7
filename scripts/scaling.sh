#!/usr/bin/env bash
# Images/s against ranks: launch.benchmark at 1..MAX ranks (one core and one thread per
# rank), then a table and a plot of total img/s and scaling efficiency, and a plot of
# where each step's time goes and of the input paths per core.
#   scripts/scaling.sh [MAX] [key=value ...]    (MAX defaults to nproc)
#   OUT=results/scaling  VENV=.venv  (environment)
set -euo pipefail
cd "$(dirname "$0")/.."
MAX=${1:-$(nproc)}
shift || true
OUT=${OUT:-results/scaling}
VENV=${VENV:-.venv}
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
for n in $(seq 1 "$MAX"); do
    "$VENV/bin/mpiexec" -n "$n" "$VENV/bin/python" -m launch.benchmark out="$OUT/n$n" "$@"
done
"$VENV/bin/python" - "$OUT" "$MAX" <<'PY'
import json, os, sys
import distributed  # noqa: F401
from distributed.bench.report import breakdown_plot, scaling_report
out, top = sys.argv[1], int(sys.argv[2])
results = [json.load(open(os.path.join(out, 'n{}'.format(n), 'benchmark.json')))
           for n in range(1, top + 1)]
print(scaling_report(results, os.path.join(out, 'scaling.png')))
breakdown_plot(results, os.path.join(out, 'breakdown.png'))
print('plots: {0}/scaling.png {0}/breakdown.png'.format(out))
PY
