"""``recs follow``: the chain that never ends. Watch a landing location, train each complete
window in partition order from the previous window's model, retry, gate, publish.

State lives in one directory, held by a lease (``.recs-follow.lock``, the save lock's
mechanism) against a second supervisor:

    STATE/state.json                  the config's sha256 and the landing location
    STATE/ledger.jsonl                one record per event (``recs_core.follow.ledger``)
    STATE/current.json                the newest good model (replaced atomically)
    STATE/windows/<id>/ckpt/step-N/   a window's checkpoints (its job's --save)
    STATE/windows/<id>/delta/         the rows the window changed (its --export-delta)

Per window: a job ``recs train --data WINDOW --init-from HEAD --save/--resume its ckpt
--export-delta ... --compare-with LAST_PUBLISHED --compare-data LAST_GOOD_WINDOW``
through the launcher template. Its outcome:

* exit 0: the gate (:func:`gate`) decides; passed: published (a new version under
  ``--publish``) or accepted, and the chain goes on from it; failed: withheld, and the
  chain goes on from the trained model or the last good one (``--on-withheld``);
* preempted (``EXIT_PREEMPTED``): launched again with ``--resume`` (any number of ranks);
  when the supervisor itself was told to stop, it stops too (same status);
* too many bad rows: the window is quarantined (not trained) and the chain goes on;
* any other failure: up to ``--max-attempts`` attempts with back-off, each resuming from
  the window's newest checkpoint; then the window is marked failed and the supervisor
  stops with one line.

A restarted supervisor reads the ledger and resumes the window in progress.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recs_core.checkpoint.files import atomic_write
from recs_core.checkpoint.outdir import SaveLock
from recs_core.errors import EXIT_PREEMPTED, RecsError
from recs_core.follow.launch import (
    DEFAULT_LAUNCHER,
    JobResult,
    Running,
    env_for_job,
    job_command,
    worker_command,
)
from recs_core.follow.ledger import GOOD, Ledger
from recs_core.follow.publish import check_publish_dir, publish, retain, versions
from recs_core.follow.windows import Landing, Window

STATE_FILE = "state.json"
FOLLOW_LOCK = ".recs-follow.lock"


@dataclass
class Gate:
    """When a trained window is withheld:

    * any parameter or the loss is not finite;
    * on the window's held-out rows (the first ``COMPARED_ROWS``, scored by both), its
      logloss is worse than the last published model's by more than ``logloss_margin``
      (its AUC lower by more than ``auc_margin``, when set);
    * on the *guard* rows (the last good window's held-out rows, whose labels a gate
      trusted), its logloss is worse than the last published model's by more than
      ``guard_margin`` plus what it gained on the window's held-out rows (the smaller of
      its logloss and AUC gains there; AUC:
      ``guard_auc_margin``, when set): a model that follows drift does worse on older
      rows, by about what it learnt of the new ones; one trained on broken labels learnt
      nothing there and does far worse;
    * the window's labels look broken: the last published model's AUC on the window's
      held-out rows is lower than on the guard rows by more than ``label_auc_drop`` (the
      last good model cannot predict them any more: shuffled labels, shifted columns).

    Measured on a drifting synthetic chain (12k-row windows, drift 0.1): a window trained
    two windows past its guard rows moved them by +0.012 logloss and -0.026 AUC, the last
    published model's AUC fell 0.033 from guard rows to held-out rows; a window with
    shuffled labels: +0.030, -0.057 and 0.184. On 2M-row windows (drift 0.05,
    `bench/bench_chain.py`) a good window moved its guard rows by +0.022 logloss while
    gaining 0.040 on its own held-out rows."""

    logloss_margin: float = 0.01
    auc_margin: float | None = None
    guard_margin: float = 0.02
    guard_auc_margin: float | None = None
    label_auc_drop: float = 0.1


def gate(out: dict[str, Any], rule: Gate) -> tuple[bool, str]:
    """(passed, why) for a finished job's figures."""
    if not out.get("finite", False):
        return False, "a parameter or the loss is not finite"
    base = out.get("baseline")
    if not base:
        return True, "no published model to compare with: finite"
    # the trained model on the rows the baseline scored (older outputs: all held-out rows)
    mine_ll, mine_auc = (base["trained_logloss"], base.get("trained_auc")) \
        if "trained_logloss" in base else (out.get("eval_logloss"), out.get("eval_auc"))
    checks = [("held-out", mine_ll, base.get("eval_logloss"), mine_auc, base.get("eval_auc"),
               rule.logloss_margin, rule.auc_margin)]
    guard = base.get("guard")
    if guard:
        # what it learnt of the new rows: the smaller of its logloss and AUC gains there
        # (calibrating to shuffled labels gains logloss, never AUC)
        pairs = ((base.get("eval_logloss"), mine_ll), (mine_auc, base.get("eval_auc")))
        gain = max(0.0, min((a - b for a, b in pairs if a is not None and b is not None),
                            default=0.0))
        checks.append(("guard (last good window's held-out)", guard.get("logloss"),
                       guard.get("baseline_logloss"), guard.get("auc"), guard.get("baseline_auc"),
                       rule.guard_margin + gain, rule.guard_auc_margin))
    for what, ll, base_ll, a, base_a, margin, auc_margin in checks:
        if ll is not None and base_ll is not None and ll > base_ll + margin:
            return False, (f"{what} logloss {ll:.5f} > {base_ll:.5f} (last published) + "
                           f"{margin:.4g}")
        if auc_margin is not None and a is not None and base_a is not None \
                and a < base_a - auc_margin:
            return False, (f"{what} AUC {a:.5f} < {base_a:.5f} (last published) - "
                           f"{auc_margin:g}")
    held_auc, guard_auc = base.get("eval_auc"), (guard or {}).get("baseline_auc")
    if held_auc is not None and guard_auc is not None and \
            held_auc < guard_auc - rule.label_auc_drop:
        return False, (f"the window's labels look broken: the last published model's AUC is "
                       f"{held_auc:.5f} on its held-out rows, {guard_auc:.5f} on the last good "
                       f"window's (a drop over {rule.label_auc_drop:g})")
    if out.get("eval_logloss") is None:
        return True, "no held-out rows (--eval-fraction 0): finite"
    return True, f"held-out logloss {out['eval_logloss']:.5f} within the margin"


@dataclass
class FollowConfig:
    """``recs follow``'s options (see its --help)."""

    config: str
    watch: str
    state: str
    publish: str | None = None
    ranks: str = "1"  # a number, or @FILE read before every launch
    launcher: str = DEFAULT_LAUNCHER
    settle: float | None = None
    poll: float = 10.0
    once: bool = False
    init_from: str | None = None
    eval_fraction: float = 0.1
    checkpoint_every: str | None = None
    max_attempts: int = 3
    backoff: float = 10.0
    max_preemptions: int = 100
    full_every: int = 6
    keep_versions: int = 10
    gate: Gate = field(default_factory=Gate)
    on_withheld: str = "last-good"  # or "trained"
    keep_ranks: bool = True  # one worker trains consecutive windows (else a job each)
    max_bad_fraction: float | None = None
    train_args: list[str] = field(default_factory=list)


def _safe(window_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=\-]", "_", window_id.replace(os.sep, "__"))


class Supervisor:
    """One ``recs follow`` run over a state directory (see the module docstring)."""

    def __init__(self, cfg: FollowConfig) -> None:
        self.cfg = cfg
        self.state = Path(cfg.state).absolute()
        self.stop = threading.Event()
        self.running: Running | None = None
        self.worker: Running | None = None  # keep_ranks: the ranks kept up between windows
        self.worker_ranks = 0
        self.interrupted = False  # a job was stopped (preempted) by a signal to us
        self.lock: SaveLock | None = None
        self.landing = Landing(cfg.watch, cfg.settle)

    # ---- setup ---------------------------------------------------------------------------

    def _check_state(self) -> None:
        """The state directory belongs to this config and landing location."""
        self.state.mkdir(parents=True, exist_ok=True)
        config_sha = hashlib.sha256(Path(self.cfg.config).read_bytes()).hexdigest()
        path = self.state / STATE_FILE
        want = {"config_sha256": config_sha, "watch": os.path.abspath(self.cfg.watch)}
        if path.exists():
            try:
                have = json.loads(path.read_text())
            except (OSError, ValueError) as e:
                raise RecsError(f"{path}: unreadable ({e}): fix or remove it") from None
            if have.get("config_sha256") != config_sha:
                raise RecsError(f"{self.state}: its chain was made with another config "
                                f"(sha256 {str(have.get('config_sha256'))[:12]}..., this one "
                                f"{config_sha[:12]}...): give a new --state for a new chain")
            if have.get("watch") != want["watch"]:
                raise RecsError(f"{self.state}: its chain watches {have.get('watch')}, not "
                                f"{want['watch']}: give a new --state for another landing")
        else:
            atomic_write(path, [json.dumps(want, indent=1).encode() + b"\n"])
        if self.cfg.publish:
            check_publish_dir(self.cfg.publish)

    def ranks(self) -> int:
        """The ranks of the next job: ``--ranks N``, or ``@FILE``'s number now."""
        spec = self.cfg.ranks
        text = spec
        if spec.startswith("@"):
            try:
                text = Path(spec[1:]).read_text().strip()
            except OSError as e:
                raise RecsError(f"--ranks {spec}: cannot read ({e.strerror})") from None
        if not text.isdigit() or int(text) < 1:
            raise RecsError(f"--ranks {spec}: needs a positive number of ranks, got {text!r}")
        return int(text)

    # ---- the loop ------------------------------------------------------------------------

    def run(self) -> int:
        """Follow the landing location until stopped (``--once``: until caught up).
        Returns the exit status: 0, or ``EXIT_PREEMPTED`` when stopped by a signal."""
        self._check_state()
        self.lock = SaveLock(self.state, FOLLOW_LOCK).acquire()
        try:
            self.ledger = Ledger(self.state)
            self.ledger.read_pointer()
            for w in self.ledger.warnings:
                self.say(f"warning: {w}")
            while not self.stop.is_set():
                progressed = self._pass()
                self.stop_worker()  # caught up: nothing waits between windows
                if self.stop.is_set():
                    break
                if self.cfg.once and not progressed:
                    return 0
                if not progressed:
                    self.stop.wait(self.cfg.poll)
            return EXIT_PREEMPTED if self.interrupted else 0
        finally:
            if self.worker is not None:
                self.worker.signal(signal.SIGTERM)
                self.worker.wait()
            self.lock.release()

    def _pass(self) -> bool:
        """Train every complete window in order, up to the first incomplete one. Returns
        whether any window was processed."""
        states = self.ledger.windows()
        done_any = False
        for w in self.landing.windows():
            st = states.get(w.id)
            if st is not None and st.final:
                self._check_unchanged(w, st.fields.get("files"))
                continue
            if not self.landing.complete(w):
                break  # windows go in order: a later one waits for this one
            if not w.files:
                self.ledger.append(w.id, "quarantined", reason="a _SUCCESS marker with no "
                                   "data file", files=[])
                self.say(f"{w.id}: quarantined: a {w.id}/_SUCCESS marker with no data file")
                done_any = True
                continue
            self._window(w)
            done_any = True
            if self.stop.is_set():
                break
        return done_any

    def _check_unchanged(self, w: Window, files: list | None) -> None:
        if files is not None and files != w.signature and not any(
                r.get("changed_after") == w.signature for r in self.ledger.records
                if r["window"] == w.id):
            st = self.ledger.windows()[w.id]
            self.ledger.append(w.id, st.status, changed_after=w.signature, note=(
                "its files changed after the window was trained: not retrained"))
            self.say(f"warning: {w.id}: its files changed after it was trained (not retrained)")

    # ---- one window ----------------------------------------------------------------------

    def _head(self) -> str | None:
        """The checkpoint the next window starts from: the last final window's
        ``next_from``, else --init-from."""
        for r in reversed(self.ledger.records):
            if r.get("next_from"):
                return str(r["next_from"])
        return self.cfg.init_from

    def _baseline(self) -> tuple[str | None, str | None]:
        """(the model to compare with, the last good window's data) for the gate."""
        last_good = next((r for r in reversed(self.ledger.records)
                          if r["status"] in GOOD), None)
        if last_good is None:
            return None, None
        model = last_good.get("checkpoint")
        # the model the window starts from is scored by the job's own model, before the
        # pass; another (the chain went on from a withheld one) is loaded as published
        if model != self._head() and self.cfg.publish and last_good.get("version") is not None:
            v = Path(self.cfg.publish) / str(last_good["version"])
            model = str(v) if v.exists() else model
        return model, last_good.get("data")

    def _train_args(self, w: Window, ckpt: Path, delta: Path) -> list[str]:
        c = self.cfg
        args = ["--config", c.config, "--data", w.path, "--save", str(ckpt), "--resume",
                str(ckpt), "--export-delta", str(delta), "--eval-fraction",
                str(c.eval_fraction), "--quiet"]
        head = self._head()
        if head:
            args += ["--init-from", head]
        if c.checkpoint_every:
            args += ["--checkpoint-every", c.checkpoint_every]
        if c.max_bad_fraction is not None:
            args += ["--max-bad-fraction", str(c.max_bad_fraction)]
        model, data = self._baseline()
        if model and c.eval_fraction > 0:
            args += ["--compare-with", model]
            if data and os.path.exists(data):
                args += ["--compare-data", data]
        return args + c.train_args

    def _window(self, w: Window) -> None:
        c = self.cfg
        base = self.state / "windows" / _safe(w.id)
        ckpt, delta = base / "ckpt", base / "delta"
        base.mkdir(parents=True, exist_ok=True)
        st = self.ledger.windows().get(w.id)
        attempts = st.attempts if st else 0
        preemptions = st.preemptions if st else 0
        if st is not None and st.status == "running":
            self.say(f"{w.id}: resuming the window in progress (attempt {attempts})")
        while True:
            if self.stop.is_set():
                return
            if attempts >= c.max_attempts:
                last = st.fields.get("error") if st else None
                self.ledger.append(w.id, "failed", attempts=attempts, error=last)
                raise RecsError(f"window {w.id} failed {attempts} attempt(s), the chain "
                                f"stops: {last}")
            ranks = self.ranks()
            attempts += 1
            args = self._train_args(w, ckpt, delta)
            cmd = (worker_command(c.launcher, ranks) + ["<", *args] if c.keep_ranks
                   else job_command(c.launcher, ranks, args))
            start = time.time()
            self.ledger.append(w.id, "running", attempt=attempts, ranks=ranks,
                               start=_stamp(start), files=w.signature, data=w.path,
                               command=cmd)
            self.say(f"{w.id}: training on {ranks} rank(s) (attempt {attempts})")
            result = self._run(ranks, cmd)
            if result.preempted:
                preemptions += 1
                attempts -= 1  # a preemption is not a failed attempt
                self.ledger.append(w.id, "preempted", ranks=ranks, start=_stamp(start),
                                   end=_stamp(time.time()), checkpoint=(result.out or {}).get(
                                       "saved"), seconds=round(result.seconds, 3))
                self.say(f"{w.id}: preempted, checkpoint {(result.out or {}).get('saved')}")
                if self.stop.is_set():
                    self.interrupted = True
                    return
                if preemptions > c.max_preemptions:
                    raise RecsError(f"window {w.id}: preempted {preemptions} times, the "
                                    f"chain stops")
                continue
            if result.returncode == 0 and result.out is not None and "saved" in result.out:
                self._finished(w, result, start, attempts, ranks, delta)
                return
            if result.out and result.out.get("reason") == "too_many_bad_lines":
                self.ledger.append(w.id, "quarantined", error=result.error, attempt=attempts,
                                   bad_rows=result.out.get("bad_rows"), start=_stamp(start),
                                   end=_stamp(time.time()))
                self.say(f"{w.id}: quarantined (not trained): {result.error}")
                return
            if self.stop.is_set():  # told to stop while the job failed: keep it resumable
                self.ledger.append(w.id, "preempted", ranks=ranks, start=_stamp(start),
                                   end=_stamp(time.time()), error=result.error)
                self.interrupted = True
                return
            self.ledger.append(w.id, "error", attempt=attempts, ranks=ranks,
                               start=_stamp(start), end=_stamp(time.time()), error=result.error)
            st = self.ledger.windows()[w.id]
            self.say(f"{w.id}: attempt {attempts} failed: {result.error}")
            if attempts < c.max_attempts:
                self.stop.wait(c.backoff * 2 ** (attempts - 1))

    def _run(self, ranks: int, cmd: list[str]) -> JobResult:
        """Train one window: a job of its own, or (``keep_ranks``) the next window of the
        worker on ``ranks`` ranks (started, or restarted on another number, as needed)."""
        if not self.cfg.keep_ranks:
            self.running = Running(cmd, env_for_job())
            try:
                return self.running.wait()
            finally:
                self.running = None
        args = cmd[cmd.index("<") + 1:]
        if self.worker is None or not self.worker.alive or self.worker_ranks != ranks:
            self.stop_worker()
            self.worker = Running(worker_command(self.cfg.launcher, ranks), env_for_job(),
                                  worker=True)
            self.worker_ranks = ranks
        self.running = self.worker
        try:
            self.worker.send(args)
            return self.worker.result()
        except BrokenPipeError:  # it ended before taking the window
            return self.worker.wait()
        finally:
            self.running = None
            if self.worker is not None and not self.worker.alive:
                self.worker = None

    def stop_worker(self) -> None:
        """No more windows for now: the worker ends (its ranks wait on no one)."""
        if self.worker is not None:
            self.worker.finish()
            self.worker = None

    def _finished(self, w: Window, result: JobResult, start: float, attempt: int,
                  ranks: int, delta: Path) -> None:
        """Gate, publish, record, move the chain on."""
        c, out = self.cfg, result.out or {}
        passed, why = gate(out, c.gate)
        t_pub = time.perf_counter()
        version = None
        saved = str(out["saved"])
        if passed and c.publish:
            head = self._head()
            prev = versions(c.publish)
            last_pub = next((r for r in reversed(self.ledger.records)
                             if r["status"] == "published"), None)
            as_delta = (prev and last_pub is not None and head == last_pub.get("checkpoint")
                        and last_pub.get("version") == prev[-1]
                        and len(prev) - _last_full(c.publish, prev) + 1 < c.full_every)
            version = publish(c.publish, window=w.id, step=int(out.get("global_step", 0)),
                              checkpoint=saved, delta=str(delta) if as_delta else None,
                              base=prev[-1] if as_delta else None,
                              extra={"eval_auc": out.get("eval_auc"),
                                     "eval_logloss": out.get("eval_logloss")})
            retain(c.publish, c.keep_versions)
        publish_s = time.perf_counter() - t_pub
        status = ("published" if c.publish else "accepted") if passed else "withheld"
        good = self.ledger.good()
        nxt = (saved if passed or c.on_withheld == "trained"
               else good["checkpoint"] if good else c.init_from)
        ck = out.get("checkpoint") or {}
        parts = {"launch": round(max(0.0, result.seconds - out.get("command_seconds",
                                                                  result.seconds)), 3),
                 "load": ck.get("load_seconds"), "train": out.get("seconds"),
                 "score": out.get("eval_seconds"), "compare": out.get("compare_seconds"),
                 "save": ck.get("save_seconds"), "delta": out.get("delta_seconds"),
                 "publish": round(publish_s, 3)}
        self.ledger.append(
            w.id, status, attempt=attempt, ranks=ranks, start=_stamp(start),
            end=_stamp(time.time()), rows=out.get("rows"), train_rows=out.get("train_rows"),
            eval_rows=out.get("eval_rows"),
            trained_rows_checksum=out.get("trained_rows_checksum"),
            progressive_auc=out.get("progressive_auc"),
            progressive_logloss=out.get("train_logloss"), eval_auc=out.get("eval_auc"),
            eval_logloss=out.get("eval_logloss"), baseline=out.get("baseline"),
            samples_per_sec=out.get("samples_per_sec"), seconds=round(result.seconds, 3),
            parts=parts, checkpoint=saved, version=version,
            gate={"passed": passed, "why": why}, bad_rows=out.get("bad_rows"),
            next_from=nxt, data=w.path, files=w.signature)
        self.ledger.write_pointer()
        self.say(f"{w.id}: {status}" + (f" as version {version}" if version else "")
                 + f" ({why})")
        self._prune()

    def _prune(self) -> None:
        """Remove the checkpoints and deltas of trained windows older than the newest
        ``keep_versions`` (an hourly chain would add a model a window for ever), never
        those of the model the next window starts from or of the last good one (published
        versions hold their own links to their files)."""
        needed = [Path(str(x)).resolve() for x in (
            self._head(), (self.ledger.good() or {}).get("checkpoint")) if x]
        trained = [wid for wid, st in self.ledger.windows().items()
                   if st.status in (*GOOD, "withheld")]
        for wid in trained[:-self.cfg.keep_versions]:
            base = self.state / "windows" / _safe(wid)
            ckpt = base / "ckpt"
            if not (ckpt.exists() or (base / "delta").exists()) or any(
                    n.is_relative_to(ckpt.resolve()) for n in needed):
                continue
            shutil.rmtree(ckpt, ignore_errors=True)
            shutil.rmtree(base / "delta", ignore_errors=True)
            self.say(f"{wid}: its checkpoint removed (older than the newest "
                     f"{self.cfg.keep_versions} trained windows)")

    # ---- signals and output ---------------------------------------------------------------

    def request_stop(self, sig: int) -> None:
        """Stop after the job in flight (forwarded the signal) checkpoints."""
        if self.stop.is_set():  # a second signal: the job is told again
            if self.running is not None:
                self.running.signal(sig)
            return
        self.stop.set()
        if self.running is not None:
            self.running.signal(signal.SIGTERM)

    @staticmethod
    def say(line: str) -> None:
        import sys

        sys.stderr.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} recs follow: {line}\n")
        sys.stderr.flush()


def _last_full(publish_dir: str, have: list[int]) -> int:
    """The position (1-based, among ``have``) of the newest full version."""
    from recs_core.follow.publish import read_version

    for i in range(len(have) - 1, -1, -1):
        if read_version(publish_dir, have[i])["kind"] == "full":
            return i + 1
    return 0


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))
