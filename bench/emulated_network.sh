#!/usr/bin/env bash
# Run COMMAND in a private network namespace whose loopback is rate-limited, with MPI
# forced over TCP, to emulate a cluster network on one machine (ranks that share memory
# copy messages with their own CPUs and never leave the CPU idle).
set -euo pipefail

usage() {
    cat <<USAGE
Usage: bench/emulated_network.sh [--rate RATE] [--burst BYTES] -- COMMAND [ARGS...]

Runs COMMAND inside a fresh network namespace (ip netns) whose loopback is shaped with
'tc qdisc ... tbf rate RATE' (default 2gbit: about 1 Gbit/s each way, as both directions
share the one loopback), with MPI forced over TCP:
  MPICH:    MPIR_CVAR_NOLOCAL=1 MPIR_CVAR_CH4_NETMOD=ofi FI_PROVIDER=tcp
  Open MPI: OMPI_MCA_pml=ob1 OMPI_MCA_btl=tcp,self OMPI_MCA_btl_tcp_if_include=lo
The namespace is removed afterwards, also when COMMAND fails; COMMAND's exit status is
passed through. Needs root (or CAP_NET_ADMIN), iproute2 and tc.
USAGE
}

rate=2gbit
burst=128kb
while [[ $# -gt 0 ]]; do
    case $1 in
        --rate) rate=${2:?--rate needs a value}; shift 2 ;;
        --burst) burst=${2:?--burst needs a value}; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        --) shift; break ;;
        *) echo "emulated_network.sh: unknown option $1 (use -- before the command)" >&2
           exit 2 ;;
    esac
done
[[ $# -gt 0 ]] || { usage >&2; exit 2; }
for tool in ip tc; do
    command -v "$tool" >/dev/null || { echo "emulated_network.sh: $tool not found" >&2; exit 2; }
done

ns="recs-emu-$$"
cleanup() { ip netns del "$ns" 2>/dev/null || true; }
trap cleanup EXIT INT TERM
ip netns add "$ns" || { echo "emulated_network.sh: cannot create a network namespace" \
    "(needs root or CAP_NET_ADMIN)" >&2; exit 2; }
ip netns exec "$ns" ip link set lo up
ip netns exec "$ns" tc qdisc add dev lo root tbf rate "$rate" burst "$burst" latency 50ms

export MPIR_CVAR_NOLOCAL=1 MPIR_CVAR_CH4_NETMOD=ofi FI_PROVIDER=tcp
export OMPI_MCA_pml=ob1 OMPI_MCA_btl=tcp,self OMPI_MCA_btl_tcp_if_include=lo
export RECS_EMULATED_NETWORK="$rate"
set +e
ip netns exec "$ns" "$@"
status=$?
set -e
exit "$status"
