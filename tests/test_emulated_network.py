"""bench/emulated_network.sh: shaped loopback in a private namespace, MPI over TCP inside,
exit status passed through, namespace removed afterwards; with --hosts, every rank in its
own namespace behind its own shaped link (both MPIs), namespaces removed whatever
happens."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, mpiexec

SCRIPT = ROOT / "bench" / "emulated_network.sh"


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


@pytest.fixture(scope="module", autouse=True)
def netns_available() -> None:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    probe = subprocess.run(["ip", "netns", "add", "recs-probe-test"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"ip netns unavailable here: {probe.stderr.decode().strip()}")
    subprocess.run(["ip", "netns", "del", "recs-probe-test"], check=True)


def run(*args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


def test_shapes_loopback_and_passes_exit_status_through() -> None:
    before = namespaces()
    r = run("--rate", "1gbit", "--", "sh", "-c",
            "tc qdisc show dev lo; echo $MPIR_CVAR_CH4_NETMOD $OMPI_MCA_btl; exit 7")
    assert r.returncode == 7, r.stderr
    assert "tbf" in r.stdout and "rate 1Gbit" in r.stdout
    assert "ofi tcp,self" in r.stdout
    assert namespaces() == before  # torn down although the command failed


def test_mpi_runs_over_tcp_inside() -> None:
    probe = ("from mpi4py import MPI; import os; c = MPI.COMM_WORLD; "
             "s = c.allreduce(c.rank + 1); os.write(1, f'sum {s}\\n'.encode())")
    r = run("--", mpiexec(), "-n", "2", sys.executable, "-c", probe, timeout=180)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n").count("sum 3") == 2


def test_usage_errors() -> None:
    assert run("--help").returncode == 0
    r = run("--bogus", "--", "true")
    assert r.returncode == 2 and "unknown option" in r.stderr
    assert run().returncode == 2


def test_script_is_executable() -> None:
    assert os.access(Path(SCRIPT), os.X_OK)


# --- --hosts: one namespace per rank

# Each rank: its namespace, then its eth0 byte counters around sending SEND bytes to the
# other rank and receiving as many, then the one-way time of TIMED bytes 0 -> 1.
HOSTS_PROBE = """
import json, os, sys, time
import numpy as np
from mpi4py import MPI
send, timed = int(sys.argv[1]), int(sys.argv[2])
def counters():
    for line in open("/proc/net/dev"):
        name, _, rest = line.partition(":")
        if name.strip() == "eth0":
            v = rest.split()
            return int(v[0]), int(v[8])
c = MPI.COMM_WORLD
peer = 1 - c.rank
c.Barrier()
rx0, tx0 = counters()
a = np.ones(send, np.uint8); b = np.empty_like(a)
c.Sendrecv(a, peer, recvbuf=b, source=peer)
c.Barrier()
rx1, tx1 = counters()
big = np.ones(timed, np.uint8)
c.Barrier()
t = time.perf_counter()
if c.rank == 0:
    c.Send(big, 1)
else:
    c.Recv(big, 0)
    t = time.perf_counter() - t
out = {"rank": c.rank, "netns": os.stat("/proc/self/ns/net").st_ino,
       "rx": rx1 - rx0, "tx": tx1 - tx0, "seconds": t if c.rank else None,
       "ok": bool(b.all())}
got = c.gather(out)
if c.rank == 0:
    print(json.dumps(got), flush=True)
"""

@pytest.mark.parametrize("mpi", ["mpich", "openmpi"])
def test_hosts_each_rank_crosses_its_own_shaped_link(mpi: str, tmp_path: Path,
                                                     request: pytest.FixtureRequest) -> None:
    bin_dir = (Path(sys.executable).parent if mpi == "mpich"
               else request.getfixturevalue("openmpi_venv") / "bin")
    probe = tmp_path / "probe.py"
    probe.write_text(HOSTS_PROBE)
    send, timed, rate_bits = 8 << 20, 16 << 20, 250e6
    before = namespaces()
    env = dict(os.environ, MPIEXEC=str(bin_dir / "mpiexec"))
    r = run("--hosts", "2", "--rate", "250mbit", "--", str(ROOT / "mpi_launch.sh"), "-n", "2",
            "--threads", "1", str(bin_dir / "python"), str(probe), str(send), str(timed),
            timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = json.loads([ln for ln in r.stdout.splitlines() if ln.startswith("[")][-1])
    assert [x["ok"] for x in ranks] == [True, True]
    # each rank in a namespace of its own, neither this process's
    assert len({x["netns"] for x in ranks} | {os.stat("/proc/self/ns/net").st_ino}) == 3
    for x in ranks:  # the exchange crossed each rank's own link, both ways
        assert x["tx"] >= send and x["rx"] >= send, x
    # the link's rate: 16 MiB at 250 Mbit/s take 0.54 s (unshaped: a few ms)
    wire = timed * 8 / ranks[1]["seconds"]
    assert 0.4 * rate_bits < wire < 1.15 * rate_bits, wire
    assert namespaces() == before


def test_hosts_namespaces_removed_after_failure() -> None:
    before = namespaces()
    r = run("--hosts", "3", "--rate", "100mbit", "--", "sh", "-c",
            "echo $RECS_EMULATED_HOSTS; ip -o addr show br0; tc qdisc show; exit 7")
    assert r.returncode == 7, r.stderr
    hosts = r.stdout.split("\n")[0].split()
    assert len(hosts) == 3 and not set(hosts) & before
    assert "10.77.0.254/24" in r.stdout  # the command runs beside the bridge
    assert r.stdout.count("tbf") == 3 and "rate 100Mbit" in r.stdout  # the bridge's ports
    assert namespaces() == before


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_hosts_namespaces_removed_when_killed(sig: signal.Signals, tmp_path: Path) -> None:
    before = namespaces()
    pidfile = tmp_path / "pid"
    p = subprocess.Popen([str(SCRIPT), "--hosts", "2", "--", "sh", "-c",
                          f"echo $$ > {pidfile}; echo $RECS_EMULATED_HOSTS; sleep 300"],
                         stdout=subprocess.PIPE, text=True)
    try:
        hosts = p.stdout.readline().split()
        assert len(hosts) == 2 and set(hosts) <= namespaces()
        p.send_signal(sig)
        assert p.wait(timeout=60) == 128 + sig
    finally:
        p.kill()
    assert namespaces() == before
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{child}").exists()  # the command was stopped too


def test_hosts_leftovers_of_a_killed_run_removed_by_the_next() -> None:
    before = namespaces()
    p = subprocess.Popen([str(SCRIPT), "--hosts", "2", "--", "sh", "-c",
                          "echo $$ $RECS_EMULATED_HOSTS; exec sleep 300"],
                         stdout=subprocess.PIPE, text=True)
    sleeper = None
    try:
        sleeper, *hosts = p.stdout.readline().split()
        p.kill()  # no trap runs: the namespaces stay
        p.wait(timeout=30)
        assert set(hosts) <= namespaces()
        assert run("--hosts", "1", "--", "true").returncode == 0
        assert namespaces() == before
    finally:
        p.kill()
        for ns in namespaces() - before:  # the orphaned sleep's, should the test fail
            subprocess.run(["ip", "netns", "del", ns])
        if sleeper:  # orphaned by the SIGKILL
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(sleeper), signal.SIGKILL)


def test_hosts_more_ranks_than_hosts_wrap_round_robin(tmp_path: Path) -> None:
    probe = ("from mpi4py import MPI; import os; c = MPI.COMM_WORLD; "
             "ns = c.gather(os.stat('/proc/self/ns/net').st_ino); s = c.allreduce(c.rank + 1); "
             "c.rank or print('ns', len(set(ns)), ns[0] == ns[2], 'sum', s)")
    r = run("--hosts", "2", "--", str(ROOT / "mpi_launch.sh"), "-n", "3", "--threads", "1",
            sys.executable, "-c", probe, timeout=300,
            env=dict(os.environ, MPIEXEC=mpiexec()))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ns 2 True sum 6" in r.stdout


def test_hosts_usage_errors() -> None:
    r = run("--hosts", "x", "--", "true")
    assert r.returncode == 2 and "--hosts must be" in r.stderr
