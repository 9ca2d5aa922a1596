"""Tests of the mpi_launch.sh wrapper around mpiexec."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "mpi_launch.sh"
BIN_DIR = os.path.dirname(sys.executable)
# One os.write per rank: mpiexec merges the ranks' output streams, and print() may split a
# line into several writes that interleave with the other rank's.
RANK_PROBE = (
    "import os; from mpi4py import MPI; c = MPI.COMM_WORLD; "
    "e = os.environ; os.write(1, f\"RANK {c.rank} {c.size} {e['OMP_NUM_THREADS']} "
    "{e['NUMBA_NUM_THREADS']} {e['RECS_THREADS_PER_RANK']}\\n\".encode())"
)


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("VIRTUAL_ENV", "MPIEXEC", "OMP_NUM_THREADS"):
        env.pop(var, None)
    env["PATH"] = BIN_DIR + os.pathsep + env.get("PATH", "")
    env.update(extra)
    return env


def _run(*args: str, env: dict[str, str] | None = None, script: Path = SCRIPT):
    return subprocess.run(
        [str(script), *args],
        env=_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _ranks(stdout: str) -> list[list[str]]:
    return sorted(line.split()[1:] for line in stdout.splitlines() if line.startswith("RANK "))


@pytest.mark.mpi
def test_two_ranks_default_threads():
    res = _run("-n", "2", sys.executable, "-c", RANK_PROBE)
    assert res.returncode == 0, res.stderr
    ranks = _ranks(res.stdout)
    assert [r[:2] for r in ranks] == [["0", "2"], ["1", "2"]], res.stdout
    threads = {tuple(r[2:]) for r in ranks}
    assert len(threads) == 1
    ((omp, numba, recs),) = threads
    assert omp == numba == recs and int(recs) >= 1


@pytest.mark.mpi
def test_explicit_threads_and_separator():
    res = _run("-n", "2", "--threads", "3", "--", sys.executable, "-c", RANK_PROBE)
    assert res.returncode == 0, res.stderr
    assert _ranks(res.stdout) == [["0", "2", "3", "3", "3"], ["1", "2", "3", "3", "3"]]


@pytest.mark.mpi
def test_exit_code_is_passed_through():
    res = _run("-n", "1", sys.executable, "-c", "import sys; sys.exit(3)")
    assert res.returncode == 3


def test_help_exits_zero():
    res = _run("--help")
    assert res.returncode == 0
    assert "Usage:" in res.stdout and "--threads" in res.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-n", "0", "true"], "-n must be a positive integer"),
        (["-n", "abc", "true"], "-n must be a positive integer"),
        (["-n"], "needs a value"),
        (["--threads", "0", "true"], "--threads must be a positive integer"),
        (["--bogus", "true"], "unknown option"),
        (["-n", "2"], "no COMMAND"),
    ],
)
def test_bad_arguments_exit_two(args, message):
    res = _run(*args)
    assert res.returncode == 2
    assert message in res.stderr
    assert res.stdout == ""


def test_bad_mpiexec_override_exits_two():
    res = _run("true", env=_env(MPIEXEC="/nonexistent/mpiexec"))
    assert res.returncode == 2
    assert "MPIEXEC" in res.stderr


def test_missing_mpiexec_exits_two(tmp_path):
    # A copy of the script outside the repo has no .venv to fall back on.
    system_path = "/usr/bin:/bin"
    if shutil.which("mpiexec", path=system_path):
        pytest.skip("a system-wide mpiexec is installed")
    script = tmp_path / "mpi_launch.sh"
    shutil.copy2(SCRIPT, script)
    res = _run("true", env={"PATH": system_path, "HOME": str(tmp_path)}, script=script)
    assert res.returncode == 2
    assert "mpiexec not found" in res.stderr


@pytest.mark.parametrize(
    ("version", "nranks", "expected"),
    [
        ("4.1.5", "100000", ["--oversubscribe"]),
        ("5.0.3", "100000", ["--map-by", ":OVERSUBSCRIBE"]),
        ("4.1.5", "1", []),
    ],
)
def test_open_mpi_flags(tmp_path, version, nranks, expected):
    fake = tmp_path / "mpiexec"
    fake.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = "--version" ]; then echo "mpiexec (Open MPI) {version}"; exit 0; fi\n'
        'echo "ARGS $*"\n'
        'echo "EAGER $OMPI_MCA_btl_tcp_eager_limit SNDBUF $OMPI_MCA_btl_tcp_sndbuf"\n'
    )
    fake.chmod(0o755)
    res = _run("-n", nranks, "--threads", "2", "echo", "hi",
               env=_env(MPIEXEC=str(fake), OMPI_MCA_btl_tcp_sndbuf="65536"))
    assert res.returncode == 0, res.stderr
    args_line, tcp_line = res.stdout.splitlines()
    assert tcp_line.split() == ["EAGER", "4194304", "SNDBUF", "65536"]  # the user's kept
    args = args_line.split()
    assert args[0] == "ARGS"
    assert args[-4:] == ["-n", nranks, "echo", "hi"]
    assert ("--allow-run-as-root" in args) == (os.geteuid() == 0)
    for flag in expected:
        assert flag in args
    if not expected:
        assert "--oversubscribe" not in args and ":OVERSUBSCRIBE" not in args
    assert args.count("-x") == 10 and "RECS_THREADS_PER_RANK" in args
    assert "OMPI_MCA_btl_tcp_eager_limit" in args


@pytest.mark.mpi
def test_hostfile_runs_the_ranks_on_its_hosts(tmp_path):
    """MPICH's syntax (one host per line, here this host twice): 2 ranks; threads per rank
    counted by the ranks per host (1 each on 2 hosts)."""
    hosts = tmp_path / "hosts"
    hosts.write_text("# two hosts\nlocalhost\nlocalhost\n")
    res = _run("-n", "2", "--hostfile", str(hosts), sys.executable, "-c", RANK_PROBE)
    assert res.returncode == 0, res.stderr
    ranks = _ranks(res.stdout)
    assert [r[:2] for r in ranks] == [["0", "2"], ["1", "2"]], res.stdout
    cores = len(os.sched_getaffinity(0))
    assert {r[4] for r in ranks} == {str(max(1, cores))}


@pytest.mark.parametrize(("version", "flag"), [("4.1.5", "--hostfile"), ("", "-f")])
def test_hostfile_flag_per_mpi(tmp_path, version, flag):
    fake = tmp_path / "mpiexec"
    name = f"(Open MPI) {version}" if version else "HYDRA build details:"
    fake.write_text("#!/bin/sh\n"
                    f'if [ "$1" = "--version" ]; then echo "mpiexec {name}"; exit 0; fi\n'
                    'echo "ARGS $*"\n')
    fake.chmod(0o755)
    hosts = tmp_path / "hosts"
    hosts.write_text("a slots=2\nb slots=2\n")
    res = _run("-n", "4", "--hostfile", str(hosts), "echo", "hi", env=_env(MPIEXEC=str(fake)))
    assert res.returncode == 0, res.stderr
    args = res.stdout.split()
    assert args[args.index(flag) + 1] == str(hosts)
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n\n")
    res = _run("-n", "2", "--hostfile", str(empty), "true", env=_env(MPIEXEC=str(fake)))
    assert res.returncode == 2 and "names no host" in res.stderr
