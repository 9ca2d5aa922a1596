#!/usr/bin/env bash
# Launch a command on N MPI ranks with a sane threads-per-rank setting.
set -euo pipefail

PROG=$(basename "$0")
REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

usage() {
    cat <<EOF
Usage: $PROG [-n N] [--threads T] [--hostfile FILE] [--] COMMAND [ARGS...]

Run COMMAND on N MPI ranks (default 1) through mpiexec.

Options:
  -n, -np N       number of ranks (positive integer, default 1)
  --threads T     threads per rank (default: max(1, cores / ranks on this host))
  --hostfile FILE run the ranks on the hosts FILE names, in the syntax of the MPI
                  found (MPICH: 'host' or 'host:slots' per line, passed as -f FILE;
                  Open MPI: 'host slots=N', passed as --hostfile FILE). The hosts must
                  share the same paths (this checkout, its venv, the data) and reach
                  each other; without --threads each rank gets cores / ceil(N / hosts)
                  threads, the cores counted here (hosts alike)
  -h, --help      show this help and exit

Exported to every rank (all set to T):
  OMP_NUM_THREADS OPENBLAS_NUM_THREADS MKL_NUM_THREADS NUMBA_NUM_THREADS
  RECS_THREADS_PER_RANK

mpiexec is taken from \$MPIEXEC if set, else \$VIRTUAL_ENV/bin, else next to
the python on PATH, else $REPO_DIR/.venv/bin, else PATH. MPICH and Open MPI
are detected; for Open MPI --allow-run-as-root (as root) and oversubscription
(N > cores) are added, and, unless set, OMPI_MCA_btl_tcp_{eager_limit,
rndv_eager_limit,max_send_size,sndbuf,rcvbuf}=4194304 (over TCP, exchanges then
progress while ranks compute). If COMMAND is 'recs' and not on PATH, .venv/bin/recs
is used. Under bench/emulated_network.sh --hosts (\$RECS_EMULATED_HOSTS: namespace
names), rank K runs in namespace K mod N ('ip netns exec', an MPMD launch). The exit
status is that of mpiexec. Under Open MPI, whose mpirun ends the ranks at once on SIGTERM
and SIGINT, the first SIGTERM or SIGINT this script gets reaches the ranks as SIGUSR1
(recs train: stop at the next step and checkpoint), a second one mpirun as itself.

Example:
  $PROG -n 2 recs features --config c.toml --data f.txt
EOF
}

die() {
    echo "$PROG: error: $*" >&2
    echo "Try '$PROG --help'." >&2
    exit 2
}

is_pos_int() { [[ $1 =~ ^[1-9][0-9]*$ ]]; }

nranks=1
threads=""
hostfile=""
while (($#)); do
    case $1 in
        -h | --help) usage; exit 0 ;;
        --hostfile | -f)
            (($# >= 2)) || die "$1 needs a value"
            hostfile=$2; shift 2 ;;
        --hostfile=*) hostfile=${1#*=}; shift ;;
        -n | -np)
            (($# >= 2)) || die "$1 needs a value"
            nranks=$2; shift 2 ;;
        -n=* | -np=*) nranks=${1#*=}; shift ;;
        --threads)
            (($# >= 2)) || die "$1 needs a value"
            threads=$2; shift 2 ;;
        --threads=*) threads=${1#*=}; shift ;;
        --) shift; break ;;
        -*) die "unknown option '$1' (put '--' before a COMMAND starting with '-')" ;;
        *) break ;;
    esac
done

(($#)) || die "no COMMAND given"
is_pos_int "$nranks" || die "-n must be a positive integer, got '$nranks'"
[[ -z $threads ]] || is_pos_int "$threads" \
    || die "--threads must be a positive integer, got '$threads'"

# Cores available to us (GNU nproc honours OMP_NUM_THREADS: ignore it here).
ncores=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc 2>/dev/null \
    || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)
is_pos_int "$ncores" || ncores=1
per_host=$nranks
if [[ -n $hostfile ]]; then
    [[ -f $hostfile && -r $hostfile ]] || die "--hostfile '$hostfile': not a readable file"
    nhosts=$(grep -cvE '^[[:space:]]*(#|$)' "$hostfile" || true)
    ((nhosts >= 1)) || die "--hostfile '$hostfile': names no host"
    per_host=$(((nranks + nhosts - 1) / nhosts))
fi
if [[ -z $threads ]]; then
    threads=$((ncores / per_host))
    ((threads >= 1)) || threads=1
fi

# --- find mpiexec (it must match the MPI library mpi4py was built against)
find_mpiexec() {
    local dir py
    if [[ -n ${MPIEXEC:-} ]]; then
        [[ -x $MPIEXEC ]] || command -v "$MPIEXEC" >/dev/null \
            || die "MPIEXEC='$MPIEXEC' is not an executable"
        command -v "$MPIEXEC"
        return
    fi
    local candidates=()
    [[ -n ${VIRTUAL_ENV:-} ]] && candidates+=("$VIRTUAL_ENV/bin")
    for py in python3 python; do
        if py=$(command -v "$py"); then
            candidates+=("$(dirname "$py")")  # no symlink resolution: keep the venv
            break
        fi
    done
    candidates+=("$REPO_DIR/.venv/bin")
    for dir in "${candidates[@]}"; do
        if [[ -x $dir/mpiexec ]]; then
            echo "$dir/mpiexec"
            return
        fi
    done
    command -v mpiexec || die "mpiexec not found (looked in \$VIRTUAL_ENV/bin, next to python, \
$REPO_DIR/.venv/bin and PATH); install MPI, e.g. pip install mpich, or set MPIEXEC"
}
mpiexec=$(find_mpiexec)

version=$("$mpiexec" --version 2>&1 || true)
launcher=("$mpiexec")
env_vars=(OMP_NUM_THREADS OPENBLAS_NUM_THREADS MKL_NUM_THREADS NUMBA_NUM_THREADS
    RECS_THREADS_PER_RANK)
for var in "${env_vars[@]}"; do
    export "$var=$threads"
done

TCP_BYTES=4194304
if grep -qiE 'open mpi|openrte' <<<"$version"; then
    ((EUID != 0)) || launcher+=(--allow-run-as-root)
    if ((nranks > ncores)); then
        ompi_major=$(sed -nE 's/.*\(Open MPI\) ([0-9]+).*/\1/p' <<<"$version" | head -n1)
        if [[ ${ompi_major:-0} -ge 5 ]]; then
            launcher+=(--map-by :OVERSUBSCRIBE)
        else
            launcher+=(--oversubscribe)
        fi
    fi
    # Over TCP, Open MPI moves a message above its eager limit (64 KiB) only while the
    # ranks call into MPI (a handshake, then fragments), so an exchange stalls while its
    # ranks compute between polls. Eager sends up to 4 MiB and 4 MiB socket buffers let
    # the kernel carry it meanwhile (measured: CPU idle while exchanges are in flight
    # down by half in every mode, docs/BENCHMARKS.md). Values already set are kept.
    for mca in btl_tcp_eager_limit btl_tcp_rndv_eager_limit btl_tcp_max_send_size \
        btl_tcp_sndbuf btl_tcp_rcvbuf; do
        var=OMPI_MCA_$mca
        [[ -n ${!var:-} ]] || export "$var=$TCP_BYTES"
        env_vars+=("$var")
    done
    for var in "${env_vars[@]}"; do
        launcher+=(-x "$var")
    done
fi
# MPICH / Intel MPI (Hydra) forward the whole environment by default.
if [[ -n $hostfile ]]; then
    if grep -qiE 'open mpi|openrte' <<<"$version"; then
        launcher+=(--hostfile "$hostfile")
    else
        launcher+=(-f "$hostfile")
    fi
fi

# --- resolve COMMAND
if [[ $1 == recs ]] && ! command -v recs >/dev/null && [[ -x $REPO_DIR/.venv/bin/recs ]]; then
    set -- "$REPO_DIR/.venv/bin/recs" "${@:2}"
fi

# --- run it. Open MPI's mpirun ends the ranks at once on SIGTERM or SIGINT (SIGCONT,
# SIGTERM, SIGKILL a moment later): no time for recs train to stop at a step boundary and
# write a checkpoint. It forwards SIGUSR1 to every rank, which recs train takes as the same
# stop request. So under Open MPI this script stays mpirun's parent, mpirun in a session
# of its own (a terminal's Ctrl-C reaches this script only): the first SIGTERM or SIGINT
# goes on as SIGUSR1, a later one as itself (mpirun's abort). MPICH's mpiexec forwards
# SIGTERM and a first SIGINT to the ranks itself.
launch() {
    if ! grep -qiE 'open mpi|openrte' <<<"$version" || ! command -v setsid >/dev/null; then
        exec "$@"
    fi
    setsid "$@" &
    pid=$!
    relayed=0
    relay() {
        if ((relayed)); then
            kill -s "$1" "$pid" 2>/dev/null || true
        else
            relayed=1
            kill -s USR1 "$pid" 2>/dev/null || true
        fi
    }
    trap 'relay TERM' TERM
    trap 'relay INT' INT
    while :; do
        status=0
        wait "$pid" || status=$?
        kill -0 "$pid" 2>/dev/null || exit "$status"  # (else a trapped signal ended the wait)
    done
}

# --- one emulated host per rank (bench/emulated_network.sh --hosts): an MPMD launch,
# rank K run under 'ip netns exec' in namespace K mod N
if [[ -n ${RECS_EMULATED_HOSTS:-} ]]; then
    read -r -a hosts <<<"$RECS_EMULATED_HOSTS"
    apps=()
    for ((rank = 0; rank < nranks; rank++)); do
        ((rank == 0)) || apps+=(:)
        apps+=(-n 1 ip netns exec "${hosts[rank % ${#hosts[@]}]}" "$@")
    done
    launch "${launcher[@]}" "${apps[@]}"
fi
launch "${launcher[@]}" -n "$nranks" "$@"
