"""A cold latency profile in process vs through a device farm of 1 and 2 nodes, what should travel,
and a latency search through the farm.

Run alone (timings): flock -x /tmp/maedet-cpu.lock .venv/bin/python bench/farm_scaling.py
Every profile measures the same plan on a fresh cache with one ONNX Runtime thread: in process
(a child pinned to core 0 with taskset), then through a farm on this machine (`farm.local`) whose
device nodes are each pinned to their own core (node A core 0, node B core 1; the head and this
driver float). Prints the wall times, the farm's overhead per measurement at 1 node (target <= 5% of
the in-process time), the 2-node/1-node ratio (target <= 0.6), bytes per request for a structure
vs its ONNX (and the driver's export and Ray transfer time for the ONNX), and a latency search
through the 2-node farm whose winner must measure within the budget (re-measured in process too).
"""

import argparse
import json
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from maedet_deploy.search import (LatencySettings, LatencyTarget, MeasureLimits, Request, SearchJob, SearchSettings,
                                  TimingSettings, block_requests, measure_window, network_requests, open_measurer,
                                  run_search_job)
from maedet_deploy.search.farm import WINDOW, open_farm
from maedet_deploy.search.farm.executor import deal_windows
from maedet_deploy.search.farm.local import LocalFarm
from maedet_deploy.search.plan import profile_plan
from maedet_deploy.search.session import LatencySession
from maedet_deploy.structure import load_structure
from maedet_deploy.zoo import get_structure

DEVICE = "cpu-core"
TARGET = LatencyTarget(threads=1)


def session(measurer, args) -> LatencySession:
    return LatencySession(measurer, "k1kxk1", get_structure("maedet-seed"), (args.image_size, args.image_size),
                          args.scope, walks=args.walks)


def plan_requests(args) -> list[Request]:
    size = (args.image_size, args.image_size)
    plan = profile_plan("k1kxk1", get_structure("maedet-seed"), size, walks=args.walks)
    return block_requests(plan.blocks) + network_requests(plan.networks, size, args.scope)


def child(args) -> None:
    """In process, on the core taskset gave this child: the profile, or one structure measured."""
    import maedet_deploy.export  # noqa: F401  (torch imported before the clock, as the farm's probe does)

    measurer = open_measurer(TARGET, args.cache, TimingSettings())
    start = time.perf_counter()
    if args.in_windows:
        timing = measurer.referenced_timing()   # the yardsticks' reference, as the measurer gives the farm
        for window in deal_windows(plan_requests(args), args.window, 1):
            for request, entry in measure_window(TARGET, timing, window, MeasureLimits(len(window))):
                measurer.cache.put(request.item, entry)
                measurer.counters.add(entry)
        print(json.dumps({"wall_s": time.perf_counter() - start, **measurer.counters.to_dict()}))
    elif args.structure:
        structure = load_structure(args.structure)
        print(json.dumps({"ms": measurer.networks([structure], (args.image_size,) * 2, args.scope)[0]}))
    else:
        session(measurer, args).prepare()
        print(json.dumps({"wall_s": time.perf_counter() - start, **measurer.counters.to_dict()}))
    measurer.close()


def in_process(args, cache: Path, structure: Path | None = None, windows: bool = False) -> dict:
    """A child pinned to core 0: the profile in its default windows (as `maedet-deploy profile` measures it),
    or in the farm's windows one after another (the farm's work without Ray), or one structure."""
    command = ["taskset", "-c", "0", sys.executable, __file__, "--child", "--cache", str(cache),
               "--image-size", str(args.image_size), "--scope", args.scope, "--walks", str(args.walks),
               "--window", str(args.window)]
    command += (["--structure", str(structure)] if structure else []) + (["--in-windows"] if windows else [])
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def farm_profile(address: str, cache: Path, args) -> tuple[dict, dict, float]:
    """Cold profile through the farm: (counters, executor report, connect+probe seconds)."""
    start = time.perf_counter()
    executor = open_farm(address, DEVICE)
    joined = time.perf_counter() - start
    measurer = open_measurer(TARGET, str(cache), TimingSettings(), MeasureLimits(window=args.window), executor)
    start = time.perf_counter()
    session(measurer, args).prepare()
    counters = {"wall_s": time.perf_counter() - start, **measurer.counters.to_dict()}
    measurer.close()
    report = executor.report()
    executor.close()
    return counters, report, joined


def what_travels(args, sample: int = 12) -> dict:
    """A structure's pickled bytes vs its ONNX: bytes, the driver's export time, Ray's transfer time."""
    import ray

    from maedet_deploy.export import export_structure_onnx
    from maedet_deploy.search.predictor import NECK_CHANNELS

    requests = plan_requests(args)
    picked = requests[::max(1, len(requests) // sample)][:sample]
    folder = Path(tempfile.mkdtemp())
    onnx, export_s = [], 0.0
    for index, request in enumerate(picked):
        report = export_structure_onnx(request.structure, folder / f"{index}.onnx", request.image_size,
                                       scope=request.scope, neck_channels=NECK_CHANNELS)
        export_s += report.seconds
        onnx.append((folder / f"{index}.onnx").read_bytes())
    size = ray.remote(lambda blob: len(blob)).options(num_cpus=0, resources={_resource(): 1})
    start = time.perf_counter()
    assert [ray.get(size.remote(blob)) for blob in onnx] == list(map(len, onnx))
    transfer_s = time.perf_counter() - start
    return {"requests": len(picked), "structure_bytes": len(pickle.dumps(picked)) / len(picked),
            "onnx_bytes": sum(map(len, onnx)) / len(picked), "driver_export_s": export_s / len(picked),
            "ray_transfer_s": transfer_s / len(picked)}


def _resource() -> str:
    import ray
    return next(name for node in ray.nodes() for name in node["Resources"] if name.startswith(f"maedet:{DEVICE}:"))


def farm_search(address: str, cache: Path, args) -> dict:
    """A latency search whose every measurement runs on the farm (`search --farm`), budget
    `args.budget_factor` x the seed's latency."""
    image_size = (args.image_size, args.image_size)
    init = get_structure("maedet-seed")
    with open_farm(address, DEVICE) as executor:
        profiled = open_measurer(TARGET, str(cache), executor=executor)
        seed_ms = profiled.networks([init], image_size, args.scope)[0]     # from the profile's cache
        profiled.close()
        latency = LatencySettings(seed_ms * args.budget_factor, TARGET, args.scope, latency_cache=str(cache),
                                  profile_walks=args.walks, latency_check_every=5)
        job = SearchJob(Path(tempfile.mkdtemp(prefix="farm-search-")),
                        SearchSettings(image_size=image_size, iterations=args.iterations, population=32, seed=0),
                        init, latency=latency, limits=MeasureLimits(window=args.window), executor=executor)
        outcome = run_search_job(job)
    report = outcome.report["latency"]
    winner = json.loads((job.out / "best_structure.json").read_text()) if outcome.found else None
    return {"budget_ms": latency.latency_ms, "seed_ms": seed_ms, "winner": report["winner"],
            "measured": report["measurements"]["measured"], "structure": winner}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--scope", default="backbone")
    parser.add_argument("--walks", type=int, default=12)
    parser.add_argument("--window", type=int, default=WINDOW)
    parser.add_argument("--budget-factor", type=float, default=1.3)
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--structure", help=argparse.SUPPRESS)
    parser.add_argument("--in-windows", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    report(args, *measure_all(args))


def measure_all(args) -> tuple:
    work = Path(tempfile.mkdtemp(prefix="farm-bench-"))
    local = in_process(args, work / "in.sqlite")
    windowed = in_process(args, work / "win.sqlite", windows=True)
    with LocalFarm(work / "logs") as farm:
        farm.add_worker("127.0.0.3", DEVICE, cores="0")
        one = farm_profile(farm.address, work / "one.sqlite", args)
        farm.add_worker("127.0.0.4", DEVICE, cores="1")
        two = farm_profile(farm.address, work / "two.sqlite", args)
        agreement = _agreement(work)
        travels = what_travels(args)
        search = farm_search(farm.address, work / "two.sqlite", args)
    if search["structure"]:
        (work / "winner.json").write_text(json.dumps(search["structure"]))   # best_structure.json as written
        search["in_process_ms"] = in_process(args, work / "winner.sqlite", work / "winner.json")["ms"]
    return local, windowed, one, two, travels, search, agreement


def _agreement(work: Path) -> dict:
    """Whether every run filled the same cache rows, and how its latencies compare with the
    in-process run's (median of the ratios - 1, and the mean absolute difference)."""
    import sqlite3
    import statistics

    rows = {name: dict(((d, t, i), ms) for d, t, i, ms in sqlite3.connect(work / f"{name}.sqlite").execute(
        "SELECT device, target, item, latency_ms FROM latency")) for name in ("in", "win", "one", "two")}
    base = rows["in"]
    same = all(rows[name].keys() == base.keys() for name in rows)
    ratios = {name: [rows[name][key] / base[key] - 1 for key in base] for name in ("win", "one", "two")}
    return {"same_keys": same, **{name: (statistics.median(r), statistics.mean(map(abs, r)))
                                  for name, r in ratios.items()}}


def report(args, local, windowed, one, two, travels, search, agreement) -> None:
    n = local["measured"]
    print(f"profile: k1kxk1 seed, {args.scope} at {args.image_size}, the seed and {args.walks} walks, "
          f"window {args.window}; {n} measurements, the same cache rows in all four runs: {agreement['same_keys']}")
    print(f"{'run':<14}{'wall s':>9}{'measured':>10}{'export s':>10}{'timing s':>10}{'join s':>8}")
    rows = (("in process", local, None), ("in windows", windowed, None), ("farm 1 node", *one[::2]),
            ("farm 2 nodes", *two[::2]))
    for name, counters, joined in rows:
        print(f"{name:<14}{counters['wall_s']:>9.1f}{counters['measured']:>10}{counters['export_s']:>10.1f}"
              f"{counters['timing_s']:>10.1f}" + ("" if joined is None else f"{joined:>8.1f}"))
    for base, label in ((local, "one batch"), (windowed, "the same windows")):
        overhead = one[0]["wall_s"] - base["wall_s"]
        print(f"farm at 1 node vs in process ({label}): {1000 * overhead / n:+.1f} ms per measurement, "
              f"{100 * overhead / base['wall_s']:+.1f}% of the in-process time (target <= +5%)")
    print(f"joining the farm (connect + probe): {one[2]:.1f} s once")
    print("latencies vs the in-process run (median ratio - 1, mean |difference|): " + ", ".join(
        f"{name} {100 * agreement[key][0]:+.1f}% {100 * agreement[key][1]:.1f}%"
        for name, key in (("in windows", "win"), ("farm 1 node", "one"), ("farm 2 nodes", "two"))))
    print(f"2 nodes / 1 node wall time: {two[0]['wall_s'] / one[0]['wall_s']:.2f} (target <= 0.6); by node: "
          + ", ".join(f"{label} {row['measured']}" for label, row in two[1]["by_node"].items()))
    print(f"what travels, per request ({travels['requests']} sampled): structure {travels['structure_bytes']:.0f} B; "
          f"ONNX {travels['onnx_bytes'] / 1e6:.2f} MB, exported on the driver in {travels['driver_export_s']:.2f} s, "
          f"sent through Ray in {1000 * travels['ray_transfer_s']:.1f} ms (loopback)")
    winner = search["winner"]
    print(f"search through the farm: budget {search['budget_ms']:.3f} ms (seed {search['seed_ms']:.3f} ms), "
          f"{search['measured']} measured during it; winner "
          + ("none" if winner is None else f"measured {winner['measured_ms']:.3f} ms on the farm, "
             f"{search.get('in_process_ms', float('nan')):.3f} ms re-measured in process: "
             f"{'within' if winner['measured_ms'] <= search['budget_ms'] else 'OVER'} the budget"))


if __name__ == "__main__":
    main()
