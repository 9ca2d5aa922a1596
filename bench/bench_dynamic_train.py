"""End-to-end `recs train`-style comparison on the canonical config: the 26 categorical
tables fixed (hash_bucket 2^18) vs dynamic (hash_bucket 2^32, admit_after=2,
sketch_width=2^16). Each variant runs in its own process; prints peak RSS and progressive
AUC from the job's JSON.

    .venv/bin/python bench/bench_dynamic_train.py DATA [ROWS]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile

import tomllib

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def run_variant(data: str, dynamic: bool) -> dict:
    from recs_core.features.spec import parse_spec
    from recs_core.train.job import Job

    cfg = tomllib.loads((ROOT / "configs" / "criteo_dlrm.toml").read_text())
    if dynamic:
        f = cfg["pipeline"][1]["feature"][0]
        f["ops"][0]["buckets"] = 1 << 32
        f["embedding"]["dynamic"] = {"admit_after": 2, "sketch_width": 1 << 16}
    out = Job(parse_spec(cfg, str(ROOT / "configs" / "criteo_dlrm.toml"))).run([data])
    keep = {k: out[k] for k in ("train_rows", "progressive_auc", "peak_rss_mb", "seconds")}
    if dynamic:
        dyn = out["dynamic_tables"].values()
        keep["dynamic_rows"] = sum(d["rows"] for d in dyn)
        keep["dynamic_bytes"] = sum(d["bytes"] for d in dyn)
    return keep


def main() -> None:
    if sys.argv[1] == "--variant":
        print(json.dumps(run_variant(sys.argv[2], sys.argv[3] == "dynamic")))
        return
    data, rows = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as tmp:
        if rows:
            with open(data) as f:
                tmp.writelines(line for _, line in zip(range(rows), f))
            tmp.flush()
            data = tmp.name
        for kind in ("fixed", "dynamic"):
            got = subprocess.run([sys.executable, __file__, "--variant", data, kind],
                                 capture_output=True, text=True, check=True, cwd=ROOT)
            print(kind, got.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
