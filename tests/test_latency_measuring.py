"""Measuring latency in bounded resources: compact models, windows, temporary files, commits to the
cache as measurements arrive, contended measurements measured again, another process measuring."""

import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace

import numpy as np
import onnx
import pytest

from nets import TINY
from maedet_deploy.backends import load_runner
from maedet_deploy.bench import make_feed
from maedet_deploy.errors import MaedetError
from maedet_deploy.export.onnx import export_structure_onnx
from maedet_deploy.search import (InProcessExecutor, LatencyCache, LatencyTarget, MeasureLimits, TimingSettings,
                                  block_requests, measure_window, network_requests, open_measurer)
from maedet_deploy.search.compact import compact_model, materialize
from maedet_deploy.structure.cost import block_inputs

SIZE = (64, 64)
TARGET = LatencyTarget(threads=1)
STEADY = TimingSettings(visits=2, round_s=0.01, min_iterations=3, patience=0.0, quiet=0.0)   # every visit quiet
REQUESTS = block_requests(block_inputs(TINY, SIZE)[1:5]) + network_requests([TINY], SIZE, "detector")


def test_compact_model_keeps_the_graph_and_regenerates_the_weights(tmp_path):
    path = tmp_path / "tiny.onnx"
    export_structure_onnx(TINY, path, SIZE, scope="detector")
    compact = compact_model(path)
    original, rebuilt = onnx.load(str(path)), onnx.load_from_string(materialize(compact))
    assert len(compact.graph) < path.stat().st_size / 3 and compact.weight_bytes > 0 and compact.activation_bytes > 0
    assert [n.op_type for n in rebuilt.graph.node] == [n.op_type for n in original.graph.node]
    shapes = lambda model: {i.name: (tuple(i.dims), i.data_type) for i in model.graph.initializer}
    assert shapes(rebuilt) == shapes(original)
    kept = [i for i in original.graph.initializer if i.name not in compact.weights]
    assert kept and all(onnx.numpy_helper.to_array(i).tobytes() ==
                        onnx.numpy_helper.to_array(next(r for r in rebuilt.graph.initializer if r.name == i.name)).tobytes()
                        for i in kept)
    with load_runner(str(path), intra_threads=1) as first, load_runner(materialize(compact), intra_threads=1) as second:
        feed = make_feed(first.inputs, seed=0)
        ours, theirs = first.infer(feed), second.infer(feed)
        assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
        assert all(np.isfinite(v).all() for v in theirs.values())


class FolderWatch(threading.Thread):
    """The most files and bytes seen at once under a folder."""

    def __init__(self, folder):
        super().__init__(daemon=True)
        self.folder, self.files, self.bytes, self.stopped = folder, 0, 0, False

    def run(self):
        while not self.stopped:
            found = [os.path.join(root, name) for root, _, names in os.walk(self.folder) for name in names]
            sizes = [os.path.getsize(f) for f in found if os.path.exists(f)]
            self.files, self.bytes = max(self.files, len(found)), max(self.bytes, sum(sizes))
            time.sleep(0.002)


def test_resource_bounds_hold_on_a_tiny_setting(tmp_path):
    folder = tmp_path / "tmp"
    folder.mkdir()
    watch = FolderWatch(folder)
    watch.start()
    limits = MeasureLimits(window=2, memory_mb=9.0, disk_mb=10.0, temp_dir=str(folder))
    entries = [entry for _, entry in measure_window(TARGET, STEADY, REQUESTS, limits)]
    watch.stopped = True
    watch.join()
    # One exported model at a time on disk, within the limit, and nothing left behind.
    assert 1 <= watch.files <= 1 and 0 < watch.bytes <= limits.disk_mb * 2**20 and not any(folder.iterdir())
    # Held models stay within the memory limit (plus the one being visited); the rest were reloaded.
    assert all(e.details["peak_held_mb"] <= limits.memory_mb + max(12.0, e.details["peak_held_mb"] - limits.memory_mb)
               for e in entries)
    assert {e.details["kept_loaded"] for e in entries} == {True, False}
    # Windows of two: a window's visits all end before the next window's begin.
    times = [e.details["visit_at_s"] for e in entries]
    for first, second in zip(times[0::2], times[2::2]):
        assert max(first) < min(second)
    with pytest.raises(MaedetError, match="temporary disk") as raised:
        list(measure_window(TARGET, STEADY, REQUESTS[-1:], replace(limits, disk_mb=0.001)))
    assert raised.value.setting == "measure_disk_mb" and not any(folder.iterdir())


def ours(folder) -> list:
    """What is left in a temporary folder, but ONNX Runtime's own telemetry session file."""
    return [path for path in folder.iterdir() if path.name != ".ses"]


def rows(path) -> dict:
    """The measurements of a cache file, the yardsticks' reference rows aside."""
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as db:
            return {item: (ms, json.loads(details)["contended"])
                    for item, ms, details in db.execute("SELECT item, latency_ms, details FROM latency")
                    if not item.startswith("yardstick:")}
    except sqlite3.OperationalError:   # not created yet
        return {}


PROFILE = """
import json, sys
from maedet_deploy.search import LatencySettings, LatencyTarget, TimingSettings, profile_latency
from maedet_deploy.structure import load_structure
settings = LatencySettings(float("inf"), LatencyTarget(threads=1), latency_cache=sys.argv[2], profile_walks=2)
timing = TimingSettings(visits=2, round_s=0.01, min_iterations=3, patience=0.0, quiet=0.0)
outcome = profile_latency(settings, (64, 64), "k1kxk1", load_structure(sys.argv[1]), timing=timing)
print(json.dumps(outcome.counters.to_dict()))
"""


def test_killed_profile_leaves_no_temporary_files_and_loses_no_finished_measurement(tmp_path, tiny_file):
    folder, cache = tmp_path / "tmp", tmp_path / "c.sqlite"
    folder.mkdir()
    args, env = [sys.executable, "-c", PROFILE, str(tiny_file), str(cache)], {**os.environ, "TMPDIR": str(folder)}
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(rows(cache)) < 4 and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    at_kill = rows(cache)
    assert len(at_kill) >= 4          # committed one by one, long before the profile's end
    deadline = time.time() + 10
    while ours(folder) and time.time() < deadline:
        time.sleep(0.05)
    assert not ours(folder)           # the janitor removed the killed run's temporary folder
    rerun = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    after = rows(cache)
    assert len(after) > len(at_kill) and all(after[item] == value for item, value in at_kill.items())
    assert json.loads(rerun.stdout)["measured"] == len(after) - len(at_kill)   # nothing finished measured again
    assert not ours(folder)


def test_contended_measurements_are_measured_again_later(tmp_path):
    cache = str(tmp_path / "c.sqlite")
    never_quiet = replace(STEADY, quiet=1e9, patience=0.01, backoff_s=0.01)   # no real wait between visits
    busy = open_measurer(TARGET, cache, never_quiet, MeasureLimits(window=1))
    busy.measure(REQUESTS[:2])
    busy.close()
    assert all(contended for _, contended in rows(tmp_path / "c.sqlite").values())
    entries = LatencyCache(cache, busy.cache.device, {}, TARGET.cache_key()).get_many(r.item for r in REQUESTS[:2])
    # Each was set aside and timed again in a later window, before it was kept as contended.
    assert [e.details["attempts"] for e in entries.values()] == [2, 2]
    assert entries[REQUESTS[0].item].details["visit_at_s"][0] > entries[REQUESTS[1].item].details["visit_at_s"][-1] \
        or entries[REQUESTS[1].item].details["visit_at_s"][0] > entries[REQUESTS[0].item].details["visit_at_s"][-1]
    quiet = open_measurer(TARGET, cache, STEADY)
    quiet.measure(REQUESTS[:2])
    assert quiet.counters.measured == quiet.counters.remeasured == 2 and quiet.counters.contended == 0
    quiet.measure(REQUESTS[:2])
    assert quiet.counters.measured == 2 and quiet.counters.cached == 2   # final now: reused
    quiet.close()


def _measure_elsewhere(target, timing, limits, requests):
    return list(measure_window(target, timing, requests, limits))


class OtherProcessExecutor(InProcessExecutor):
    """Runs each window in a worker process of this machine, as a device farm would, and reports how
    many measurements the cache held whenever it hands one back."""

    def __init__(self, cache_path):
        self.pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        self.cache_path, self.rows_seen = cache_path, []

    def run(self, target, timing, limits, windows, progress):
        for window in windows:
            for request, entry in self.pool.submit(_measure_elsewhere, target, timing, limits, window).result():
                self.rows_seen.append(len(rows(self.cache_path)))
                yield request, entry

    def close(self):
        self.pool.shutdown()


def test_an_executor_measures_in_another_process_and_each_entry_is_committed_as_it_arrives(tmp_path):
    executor = OtherProcessExecutor(tmp_path / "far.sqlite")
    far = open_measurer(TARGET, str(tmp_path / "far.sqlite"), STEADY, MeasureLimits(window=2), executor)
    near = open_measurer(TARGET, str(tmp_path / "near.sqlite"), STEADY, MeasureLimits(window=2))
    values = far.measure(REQUESTS)
    near.measure(REQUESTS)
    # The yardsticks' reference first (two rows that `rows` leaves out), then each request, the one
    # before it already in the cache.
    assert executor.rows_seen == [0, 0, *range(len(REQUESTS))]
    assert set(rows(tmp_path / "far.sqlite")) == set(rows(tmp_path / "near.sqlite")) == {r.item for r in REQUESTS}
    assert far.measure(REQUESTS) == values and far.counters.measured == len(REQUESTS)
    far.close()
    near.close()
    assert executor.pool._processes        # a given executor is its opener's to close, not the measurer's
    executor.close()


def test_a_prior_from_another_target_is_scaled_by_a_few_measurements_here(tmp_path):
    """LitePred-style: the plan measured on another target (here one thread instead of two) fits a
    predictor; this target measures only the seed and three walks, and scales it to them."""
    from maedet_deploy.search.session import PRIOR_WALKS, LatencySession

    prior = str(tmp_path / "other.sqlite")
    there = open_measurer(TARGET, prior, STEADY)
    full = LatencySession(there, "k1kxk1", TINY, SIZE, "backbone", walks=5)
    full.prepare()
    there.close()
    here = open_measurer(LatencyTarget(threads=2), str(tmp_path / "here.sqlite"), STEADY)
    session = LatencySession(here, "k1kxk1", TINY, SIZE, "backbone", walks=5, prior_cache=prior)
    predictor = session.prepare()
    assert session.plan.networks == full.plan.networks[:1 + PRIOR_WALKS]
    assert here.counters.measured == len(session.plan.blocks) + len(session.plan.networks) < \
        len(full.plan.blocks) + len(full.plan.networks)
    assert len(predictor.prior_blocks) == len(full.plan.blocks) and session.prior.source.endswith(TARGET.cache_key())
    unseen = [s for s in full.plan.networks if s not in session.plan.networks]
    assert all(predictor.predict(s) > 0 for s in unseen)
    with pytest.raises(MaedetError, match="no measurements of this profile plan") as raised:
        LatencySession(here, "k1kxk1", TINY, SIZE, "backbone", walks=5, prior_cache=str(tmp_path / "here.sqlite"))
    assert raised.value.setting == "latency_prior"
    here.close()
