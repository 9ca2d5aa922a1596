#!/usr/bin/env bash
# Run COMMAND with MPI forced over TCP on a rate-limited emulated network, to emulate a
# cluster on one machine (ranks that share memory copy messages with their own CPUs and
# never leave the CPU idle). Default: one private namespace with a shaped loopback.
# --hosts N: N namespaces ("hosts"), each joined to a bridge by its own shaped veth link.
set -euo pipefail

usage() {
    cat <<USAGE
Usage: bench/emulated_network.sh [--hosts N] [--rate RATE] [--burst BYTES] -- COMMAND [ARGS...]

Default (no --hosts): runs COMMAND inside a fresh network namespace (ip netns) whose
loopback is shaped with 'tc qdisc ... tbf rate RATE' (default 2gbit: about 1 Gbit/s each
way, as both directions share the one loopback).

--hosts N: every rank sits on its own emulated host. N namespaces (one per rank; ranks
beyond N wrap round-robin), each with an interface eth0 (10.77.0.K/24) joined by a veth
link to a bridge br0 (10.77.0.254) in a further namespace; nothing touches this machine's
own network. Each link is shaped with tbf at RATE in both directions (egress of eth0 and
of its bridge port: a full-duplex NIC of RATE, default 1gbit). COMMAND runs in the
bridge's namespace (the launcher acts as the head node); ./mpi_launch.sh then starts
rank K under 'ip netns exec' in host K mod N (it reads RECS_EMULATED_HOSTS, the
space-separated namespace names). The launchers reach their ranks through inherited
descriptors (MPICH's Hydra) or over br0 (Open MPI's PMIx: PMIX_MCA_ptl_base_if_include).

MPI is forced over TCP:
  MPICH:    MPIR_CVAR_NOLOCAL=1 MPIR_CVAR_CH4_NETMOD=ofi FI_PROVIDER=tcp
            (--hosts: FI_TCP_IFACE=eth0)
  Open MPI: OMPI_MCA_pml=ob1 OMPI_MCA_btl=tcp,self OMPI_MCA_btl_tcp_if_include=lo
            (--hosts: eth0)
Exported: RECS_EMULATED_NETWORK=RATE (and RECS_EMULATED_HOSTS with --hosts).
The namespaces and links are removed afterwards, also when COMMAND fails or this script
gets SIGINT/SIGTERM (COMMAND's process group is then sent the same signal, and SIGKILL
after 10 s), and those of an earlier run that got SIGKILL at the next run; COMMAND's
exit status is passed through. Needs root (or CAP_NET_ADMIN),
iproute2 and tc.
USAGE
}

die() { echo "emulated_network.sh: $*" >&2; exit 2; }

rate=""
burst=128kb
hosts=0
while [[ $# -gt 0 ]]; do
    case $1 in
        --rate) rate=${2:?--rate needs a value}; shift 2 ;;
        --burst) burst=${2:?--burst needs a value}; shift 2 ;;
        --hosts) hosts=${2:?--hosts needs a value}; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        --) shift; break ;;
        *) die "unknown option $1 (use -- before the command)" ;;
    esac
done
[[ $# -gt 0 ]] || { usage >&2; exit 2; }
[[ $hosts =~ ^[0-9]+$ ]] && ((hosts <= 250)) || die "--hosts must be 1..250, got '$hosts'"
for tool in ip tc; do
    command -v "$tool" >/dev/null || die "$tool not found"
done

# namespaces left by a run that got SIGKILL (no trap runs): their creator is gone
for ns in $(ip netns list 2>/dev/null | sed -nE 's/^(recs-emu-[0-9]+[^ ]*).*/\1/p'); do
    pid=${ns#recs-emu-}
    pid=${pid%%-*}
    kill -0 "$pid" 2>/dev/null || ip netns del "$ns" 2>/dev/null || true
done

prefix="recs-emu-$$"
created=()
child=""
cleanup() {
    local ns
    for ns in "${created[@]}"; do
        ip netns del "$ns" 2>/dev/null || true
    done
}
on_signal() {  # forward to COMMAND's process group, wait for it, then clean up (EXIT)
    local sig=$1 code=$2 i
    trap - INT TERM
    if [[ -n $child ]]; then
        kill -s "$sig" -- "-$child" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            kill -0 "$child" 2>/dev/null || break
            sleep 0.1
        done
        kill -s KILL -- "-$child" 2>/dev/null || true
    fi
    exit "$code"
}
trap cleanup EXIT
trap 'on_signal INT 130' INT
trap 'on_signal TERM 143' TERM

add_ns() {
    ip netns add "$1" || die "cannot create a network namespace (needs root or CAP_NET_ADMIN)"
    created+=("$1")
    ip netns exec "$1" ip link set lo up
}
shape() {  # shape NS DEV: tbf on DEV's egress in NS
    ip netns exec "$1" tc qdisc add dev "$2" root tbf rate "$rate" burst "$burst" latency 50ms
}

export MPIR_CVAR_NOLOCAL=1 MPIR_CVAR_CH4_NETMOD=ofi FI_PROVIDER=tcp
export OMPI_MCA_pml=ob1 OMPI_MCA_btl=tcp,self
if ((hosts == 0)); then
    rate=${rate:-2gbit}
    run_ns="$prefix"
    add_ns "$run_ns"
    shape "$run_ns" lo
    export OMPI_MCA_btl_tcp_if_include=lo
else
    rate=${rate:-1gbit}
    run_ns="$prefix-br"
    add_ns "$run_ns"
    ip netns exec "$run_ns" ip link add br0 type bridge
    ip netns exec "$run_ns" ip addr add 10.77.0.254/24 dev br0
    ip netns exec "$run_ns" ip link set br0 up
    names=()
    for ((k = 0; k < hosts; k++)); do
        ns="$prefix-h$k"
        add_ns "$ns"
        names+=("$ns")
        ip link add eth0 netns "$ns" type veth peer name "h$k" netns "$run_ns"
        ip netns exec "$ns" ip addr add "10.77.0.$((k + 1))/24" dev eth0
        ip netns exec "$ns" ip link set eth0 up
        ip netns exec "$run_ns" ip link set "h$k" master br0
        ip netns exec "$run_ns" ip link set "h$k" up
        shape "$ns" eth0
        shape "$run_ns" "h$k"
    done
    export FI_TCP_IFACE=eth0 OMPI_MCA_btl_tcp_if_include=eth0 PMIX_MCA_ptl_base_if_include=br0
    export RECS_EMULATED_HOSTS="${names[*]}"
fi
export RECS_EMULATED_NETWORK="$rate"

# COMMAND in its own process group (job control), waited on so that signals reach us
set -m
ip netns exec "$run_ns" "$@" &
child=$!
set +m +e
wait "$child"
status=$?
child=""
exit "$status"
