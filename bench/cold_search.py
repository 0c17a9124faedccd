"""A latency search on a cold cache, then again on the warm one: wall time, measurements, the time
split (export, load, timing), peak memory (each process, and the tree) and peak temporary disk, for this
code and (with --old-tree) another checkout of the project, run one after the other.

Each run is a subprocess `maedet-deploy search` with its own fresh latency cache and its own
TMPDIR, sampled every 0.25 s: the resident memory of every process in its tree (the search and,
in this code, its export process) and the bytes under TMPDIR. Run it alone on the machine:

    flock -x /tmp/maedet-cpu.lock .venv/bin/python bench/cold_search.py --old-tree ../old
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SEARCH = ["--latency-ms", "60", "--layers", "91", "--latency-scope", "detector", "--image-size", "320"]


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def _memory_mb(pid: int, path: str, key: str) -> float:
    try:
        for line in Path(f"/proc/{pid}/{path}").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _disk_mb(folder: Path) -> float:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += (Path(root) / name).stat().st_size
            except OSError:
                continue
    return total / 2**20


class Sampler(threading.Thread):
    """Peak RSS of the root process and of any other process of its tree, peak PSS of the tree
    together (pages shared between processes, such as torch's libraries in a fork server and its
    child, counted once), and peak bytes under a folder."""

    def __init__(self, pid: int, folder: Path) -> None:
        super().__init__(daemon=True)
        self.pid, self.folder = pid, folder
        self.root_mb = self.tree_mb = self.child_mb = self.disk_mb = 0.0
        self.stopped = False

    def run(self) -> None:
        """Cheap reads often (VmRSS, the folder), PSS (a page-table walk) every 2 s: the sampler must
        not take the CPU time the measured search needs."""
        rounds = 0
        while not self.stopped:
            tree, stack = [], [self.pid]
            while stack:
                pid = stack.pop()
                tree.append(pid)
                stack += _children(pid)
            sizes = {pid: _memory_mb(pid, "status", "VmRSS:") for pid in tree}
            self.root_mb = max(self.root_mb, sizes.get(self.pid, 0.0))
            self.child_mb = max([self.child_mb] + [mb for pid, mb in sizes.items() if pid != self.pid])
            if rounds % 8 == 0:
                self.tree_mb = max(self.tree_mb, sum(_memory_mb(pid, "smaps_rollup", "Pss:") for pid in tree))
            self.disk_mb = max(self.disk_mb, _disk_mb(self.folder))
            rounds += 1
            time.sleep(0.25)


def run_search(tree: Path, work: Path, name: str, args: list[str]) -> dict:
    out, tmp = work / f"{name}-out", work / f"{name}-tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(tree), "TMPDIR": str(tmp)}   # and cwd: `-m` puts it first on the path
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "maedet_deploy.cli.main", "search", *args, "--out", str(out)],
                               env=env, cwd=tree, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = Sampler(process.pid, tmp)
    sampler.start()
    output = process.communicate()[0]
    wall = time.perf_counter() - started
    sampler.stopped = True
    sampler.join()
    if process.returncode:
        raise SystemExit(f"{name}: search failed ({process.returncode}):\n{output[-3000:]}")
    report = json.loads((out / "report.json").read_text())
    latency = report["latency"]
    counters = latency["measurements"]
    return {"wall_s": round(wall, 1), "measured": counters["measured"], "cached": counters["cached"],
            "contended": counters.get("contended"), "export_s": counters["export_s"], "load_s": counters.get("load_s"),
            "timing_s": counters["timing_s"], "profile_s": latency["time_s"]["profile"],
            "peak_rss_mb": round(sampler.root_mb), "peak_child_rss_mb": round(sampler.child_mb),
            "peak_tree_pss_mb": round(sampler.tree_mb), "peak_tmp_disk_mb": round(sampler.disk_mb, 1),
            "left_in_tmp_mb": round(_disk_mb(tmp), 1),
            "winner_measured_ms": (latency["winner"] or {}).get("measured_ms"), "limit_ms": latency["settings"]["limit_ms"],
            "winner": (out / "best_structure.json").read_text() if (out / "best_structure.json").exists() else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old-tree", type=Path, help="another checkout to run first (e.g. the baseline)")
    parser.add_argument("--search", nargs=argparse.REMAINDER, default=SEARCH, help="search options (default: %(default)s)")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    here = Path(__file__).resolve().parents[1]
    trees = ([("old", args.old_tree.resolve())] if args.old_tree else []) + [("new", here)]
    work = Path(tempfile.mkdtemp(prefix="cold-search-"))
    results = {}
    for name, tree in trees:
        cache = ["--latency-cache", str(work / f"{name}.sqlite")]
        cold = run_search(tree, work, f"{name}-cold", [*args.search, *cache])
        warm = run_search(tree, work, f"{name}-warm", [*args.search, *cache])
        warm["same_winner"] = warm.pop("winner") == cold.pop("winner")
        results[name] = {"cold": cold, "warm": warm}
        print(f"{name}: cold {json.dumps(cold)}\n{name}: warm {json.dumps(warm)}", file=sys.stderr, flush=True)
    print(json.dumps({"search": args.search, "results": results}, indent=1))
    rows = ("wall_s", "measured", "export_s", "load_s", "timing_s", "peak_rss_mb", "peak_child_rss_mb",
            "peak_tree_pss_mb", "peak_tmp_disk_mb", "left_in_tmp_mb", "winner_measured_ms")
    print(f"\n{'':22s}" + "".join(f"{f'{n} {k}':>14s}" for n in results for k in ("cold", "warm")))
    for row in rows:
        cells = (results[n][k].get(row) for n in results for k in ("cold", "warm"))
        print(f"{row:22s}" + "".join(f"{f'{v:.2f}' if isinstance(v, float) else str(v):>14s}" for v in cells))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
