"""bench/emulated_network.sh: shaped loopback in a private namespace, MPI over TCP inside,
exit status passed through, namespace removed afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
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


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)


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
