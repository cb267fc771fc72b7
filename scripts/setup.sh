#!/usr/bin/env bash
# Create or update the virtual environment: scripts/setup.sh PYTHON VENV MPI
#   MPI=pypi    MPICH and mpi4py wheels from PyPI; mpiexec lands in VENV/bin (default)
#   MPI=system  mpi4py compiled against the site's MPI (its mpicc must be on PATH)
# Called by `make`; safe to re-run.
set -euo pipefail
PYTHON=${1:-python3}
VENV=${2:-.venv}
MPI=${3:-pypi}

die() { echo "setup: $*" >&2; exit 1; }

command -v "$PYTHON" >/dev/null 2>&1 \
  || die "no Python interpreter '$PYTHON'. Install Python 3.11, 3.12 or 3.13, or name one: make PYTHON=/path/to/python3.12"
"$PYTHON" - <<'PY' || die "$("$PYTHON" -c 'import sys; print(sys.version.split()[0])') is too old: this project needs Python 3.11 or newer. Name a newer interpreter: make PYTHON=python3.12"
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY
"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] > (3, 13))' \
  || echo "setup: warning: $("$PYTHON" --version 2>&1) is newer than the Pythons this project is tested on (3.11-3.13)" >&2
command -v "${CC:-cc}" >/dev/null 2>&1 \
  || die "no C compiler ('${CC:-cc}' not found); pip needs one for packages without wheels. Install gcc (Debian/Ubuntu: apt-get install build-essential) or set CC."
case "$MPI" in
  pypi) mpi_reqs=(-r requirements-mpi.txt) ;;
  system)
    command -v mpicc >/dev/null 2>&1 \
      || die "MPI=system needs the site's mpicc on PATH (e.g. 'module load openmpi'); or use MPI=pypi."
    mpi_reqs=(--no-binary mpi4py "$(grep -E '^mpi4py' requirements-mpi.txt)") ;;
  *) die "MPI must be 'pypi' or 'system', not '$MPI'" ;;
esac

[ -x "$VENV/bin/python" ] || { echo "setup: creating $VENV with $PYTHON"; "$PYTHON" -m venv "$VENV"; }
pip=("$VENV/bin/python" -m pip --quiet --disable-pip-version-check)
# chainer's setup.py needs pkg_resources at build time: setuptools < 81 (see build_wheels.py).
"${pip[@]}" install 'setuptools>=68,<81' wheel 'numpy>=2.0,<3'
"$VENV/bin/python" scripts/build_wheels.py --requirements requirements.txt --dest .whl
"${pip[@]}" install --find-links .whl -r requirements.txt "${mpi_reqs[@]}"
"${pip[@]}" install --no-deps --no-build-isolation -e .
echo "setup: $VENV ready ($("$VENV/bin/python" -c 'import sys; print(sys.version.split()[0])'), MPI=$MPI)"
