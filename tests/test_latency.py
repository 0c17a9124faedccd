"""Latency-aware search: SQLite cache, real ONNX export + ONNX Runtime measurements, predictor, CLI."""

import json
import math
import sqlite3
import subprocess
import sys
import textwrap
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy.optimize import nnls as scipy_nnls

from cli_helpers import cli, run_cli
from nets import TINY
from maedet_deploy.errors import MaedetError
from maedet_deploy.models import build_block
from maedet_deploy.search import (Entry, LatencyCache, LatencyTarget, TimingSettings, block_item, network_item,
                                  open_measurer)
from maedet_deploy.search.requests import yardstick_requests
from maedet_deploy.search.window import balanced
from maedet_deploy.search.predictor import FEATURES, block_features, build_predictor, computed_as, nnls
from maedet_deploy.search.session import LatencySession
from maedet_deploy.search.evolution import SearchSettings, SearchState
from maedet_deploy.search.guard import LatencyBudget
from maedet_deploy.search.population import Member, Population
from maedet_deploy.search.verify import pareto_front, verify_top
from maedet_deploy.structure import K1DWK1, K1KXK1, KXKX, STEM, Block, Structure, load_structure
from maedet_deploy.structure.cost import block_inputs, compute_cost

SIZE = (64, 64)
FAST = TimingSettings(visits=2, round_s=0.01, min_iterations=3, patience=0.0)
TARGET = LatencyTarget(threads=1)
# Small plan, no waiting for a quiet machine: fast, and the same plan in the library and the CLI.
ROUND_S = 0.03   # short visits: the tiny nets run thousands of calls in them
CLI_LATENCY = ["--image-size", "64", "--threads", "1", "--quiet-wait", "0", "--profile-walks", "2",
               "--round-s", str(ROUND_S)]


# ---- the cache -------------------------------------------------------------------------------------


def test_cache_round_trip_and_reuse_across_processes(tmp_path):
    path = tmp_path / "latency.sqlite"
    cache = LatencyCache(path, "dev1", {"cpu": "test"}, "onnxruntime/fp32/b1/t1")
    entry = Entry(1.25, 0.5, 0.75, {"stats": {"median_ms": 1.25}})
    cache.put("block:a", entry)
    assert cache.get("block:a") == entry and cache.get("block:b") is None
    cache.close()
    child = textwrap.dedent(f"""
        from maedet_deploy.search.latency_cache import Entry, LatencyCache
        cache = LatencyCache({str(path)!r}, "dev1", {{}}, "onnxruntime/fp32/b1/t1")
        print(cache.get("block:a").latency_ms)
        cache.put("block:b", Entry(2.5, 0.0, 0.0, {{}}))
    """)
    result = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1.25"
    again = LatencyCache(path, "dev1", {}, "onnxruntime/fp32/b1/t1")
    assert again.get_many(["block:a", "block:b"]) == {"block:a": entry, "block:b": Entry(2.5, 0.0, 0.0, {})}
    assert again.count() == 2
    # Another device or target never sees these rows.
    assert LatencyCache(path, "dev2", {}, "onnxruntime/fp32/b1/t1").get("block:a") is None
    assert LatencyCache(path, "dev1", {}, "onnxruntime/fp32/b2/t1").get("block:a") is None


def test_concurrent_writers_lose_nothing(tmp_path):
    path = tmp_path / "latency.sqlite"
    writer = textwrap.dedent("""
        import sys
        from maedet_deploy.search.latency_cache import Entry, LatencyCache
        cache = LatencyCache(sys.argv[1], "dev", {}, "t")
        start, name = int(sys.argv[2]), sys.argv[3]
        for i in range(start, start + 300):
            cache.put(f"item{i}", Entry(float(i), 0.0, 0.0, {"writer": name}))
    """)
    processes = [subprocess.Popen([sys.executable, "-c", writer, str(path), str(start), name],
                                  stderr=subprocess.PIPE, text=True)
                 for start, name in ((0, "a"), (150, "b"))]
    for process in processes:
        assert process.wait(timeout=120) == 0, process.stderr.read()
    cache = LatencyCache(path, "dev", {}, "t")
    assert cache.count() == 450
    rows = cache.get_many(f"item{i}" for i in range(450))
    assert all(rows[f"item{i}"].latency_ms == i for i in range(450))
    assert {rows[f"item{i}"].details["writer"] for i in range(150, 300)} <= {"a", "b"}
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize("content", ["garbage", "foreign"])
def test_corrupt_or_foreign_cache_is_refused_and_left_untouched(tmp_path, content):
    path = tmp_path / "latency.sqlite"
    if content == "garbage":
        path.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 20)
    else:
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE photos (id INTEGER)")
        db.commit()
        db.close()
    before = path.read_bytes()
    with pytest.raises(MaedetError, match="corrupt or not a cache"):
        LatencyCache(path, "dev", {}, "t")
    assert path.read_bytes() == before
    result = cli("profile", "--latency-cache", path, "--image-size", "64")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "corrupt or not a cache" in result.stderr
    assert path.read_bytes() == before


# ---- measuring ---------------------------------------------------------------------------------------


def test_measurer_exports_times_and_reuses(tmp_path):
    measurer = open_measurer(TARGET, str(tmp_path / "c.sqlite"), FAST)
    placed = block_inputs(TINY, SIZE)[1:3]
    first = measurer.blocks(placed)
    assert measurer.counters.measured == 2 and measurer.counters.cached == 0 and min(first) > 0
    assert measurer.counters.export_s > 0 and measurer.counters.timing_s > 0
    assert measurer.blocks(placed) == first and measurer.counters.cached == 2
    whole = measurer.networks([TINY], SIZE, "detector")[0]
    entry = measurer.cache.get(network_item(TINY, "detector", SIZE))
    raw = entry.details["raw_ms"]
    assert entry.latency_ms == whole == raw / entry.details["speed_factor"]
    assert raw == entry.details["stats"]["median_ms"]
    assert entry.details["runner"]["intra_threads"] == 1 and len(entry.details["visit_medians_ms"]) >= 2
    # The cached number is the fastest quiet visit; with too few quiet visits (a busy host), the
    # fastest of all, marked contended. Which one happened depends on the host; the rule must hold.
    medians, shares = entry.details["visit_medians_ms"], entry.details["visit_cpu_share"]
    quiet = [m for m, share in zip(medians, shares) if share >= FAST.quiet]
    assert entry.details["contended"] == (len(quiet) < FAST.visits)
    assert raw == (min(medians) if entry.details["contended"] else min(quiet))
    assert whole > measurer.networks([TINY], SIZE, "backbone")[0]   # neck and head cost time
    measurer.close()


def test_windows_are_as_equal_as_the_limit_allows():
    """A trailing window of a few things is timed in seconds, too short for its yardstick factor."""
    assert [balanced(n, 48) for n in (0, 1, 48, 50, 96, 97)] == [48, 1, 48, 25, 48, 33]


def test_windows_are_expressed_at_the_yardsticks_reference_speed(tmp_path):
    """The first measurement into a cache times the yardsticks alone: their rows are the device's
    reference. Every later window times them beside its things and divides by their slowdown."""
    measurer = open_measurer(TARGET, str(tmp_path / "c.sqlite"), FAST)
    measurer.networks([TINY], SIZE, "backbone")
    reference = measurer.cache.get_many(r.item for r in yardstick_requests())
    assert len(reference) == 2 and all(e.details["speed_factor"] == 1.0 for e in reference.values())
    measurer.blocks(block_inputs(TINY, SIZE)[1:3])   # a small call soon after: the same factor, reused
    network, block = (measurer.cache.get(network_item(TINY, "backbone", SIZE)).details,
                      measurer.cache.get(block_item(*block_inputs(TINY, SIZE)[1])).details)
    assert "speed_reused_after_s" not in network and 0 <= block["speed_reused_after_s"] <= 30
    assert block["speed_factor"] == network["speed_factor"]
    for item in (network_item(TINY, "backbone", SIZE), block_item(*block_inputs(TINY, SIZE)[1])):
        details = measurer.cache.get(item).details
        ratios = [ms / reference[r.item].latency_ms for ms, r in zip(details["yardstick_ms"], yardstick_requests())]
        assert details["speed_factor"] == pytest.approx(math.prod(ratios) ** 0.5)
        assert measurer.cache.get(item).latency_ms == pytest.approx(details["raw_ms"] / details["speed_factor"])
    measurer.close()
    serial = open_measurer(TARGET, str(tmp_path / "s.sqlite"), replace(FAST, spread=False))   # TensorRT's way
    serial.networks([TINY], SIZE, "backbone")
    assert serial.cache.count() == 1 and serial.cache.get(network_item(TINY, "backbone", SIZE)).details[
        "speed_factor"] == 1.0
    serial.close()


def visit_times(cache: LatencyCache, items: list[str]) -> list[list[float]]:
    return [cache.get(item).details["visit_at_s"] for item in items]


def test_visits_of_a_batch_interleave_and_back_to_back_without_spread(tmp_path):
    """Spread: each thing is visited once per pass, so its visits bracket the others'; without
    spread (TensorRT's default) each thing's visits come one after another."""
    placed = block_inputs(TINY, SIZE)[1:4]
    items = [block_item(*p) for p in placed]
    steady = replace(FAST, quiet=0.0)    # every visit counts as quiet: the schedule alone decides
    spread = open_measurer(TARGET, str(tmp_path / "spread.sqlite"), steady)
    spread.blocks(placed)
    times = visit_times(spread.cache, items)
    assert all(len(t) == FAST.visits for t in times)
    assert times[0][0] < times[1][0] < times[2][0] < times[0][1] < times[1][1] < times[2][1]
    spread.close()
    serial = open_measurer(TARGET, str(tmp_path / "serial.sqlite"), replace(steady, spread=False))
    serial.blocks(placed)
    first, second, _ = visit_times(serial.cache, items)
    assert first[-1] < second[0]
    serial.close()
    assert TimingSettings.for_backend("tensorrt").spread is False and TimingSettings.for_backend("onnxruntime").spread


@pytest.mark.parametrize("options, setting, message", [
    ({"precision": "fp16"}, "precision", "needs the tensorrt backend"),
    ({"backend": "tensorrt", "precision": "int8"}, "precision", "Q/DQ"),
    ({"batch": 0}, "batch", "must be >= 1"),
    ({"backend": "tpu"}, "backend", "unknown backend"),
])
def test_target_refuses_what_it_cannot_measure(options, setting, message):
    with pytest.raises(MaedetError, match=message) as raised:
        LatencyTarget(**options)
    assert raised.value.setting == setting and "--" not in raised.value.message


# ---- the predictor -----------------------------------------------------------------------------------


def test_nnls_matches_scipy():
    rng = np.random.default_rng(0)
    for _ in range(20):
        matrix = rng.random((40, 8)) * rng.choice([1e-3, 1.0, 1e3], 8)
        target = matrix @ rng.normal(size=8) + rng.normal(size=40) * 0.1
        ours = nnls(matrix, target)
        reference = scipy_nnls(matrix, target)[0]
        assert ours.min() >= 0
        assert np.linalg.norm(matrix @ ours - target) == pytest.approx(np.linalg.norm(matrix @ reference - target),
                                                                        rel=1e-6)


@pytest.mark.parametrize("kind", [K1KXK1, KXKX, K1DWK1])
def test_block_features_count_the_convs_models_build(kind):
    """MAC features equal the convs of the torch block, and depth adds identical units."""
    mac_columns = [i for i, name in enumerate(FEATURES) if name not in ("act", "weights", "ops", "block")]
    for depth in (1, 2, 3):
        block = Block(kind, 16, 32, 2, 5, depth, 48)
        module = build_block(block).eval()
        macs = []
        hooks = [m.register_forward_hook(lambda m, i, o: macs.append(m.weight.numel() * o.shape[-1] * o.shape[-2]))
                 for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
        with torch.no_grad():
            module(torch.zeros(1, 16, 20, 20))
        for hook in hooks:
            hook.remove()
        features = block_features(block, 20, 20)
        assert features[mac_columns].sum() * 1e6 == pytest.approx(sum(macs))
        assert features[FEATURES.index("ops")] >= len(macs)
    one, two, three = (block_features(Block(kind, 16, 32, 2, 3, d, 24), 20, 20) for d in (1, 2, 3))
    assert np.allclose(three - two, two - one)


@pytest.mark.parametrize("step", [1, 16])
def test_the_predictor_learns_the_channel_step_the_device_computes_in(step):
    """Latencies that follow channels rounded up to 16 (ONNX Runtime's NCHWc blocks on AVX-512) are
    fitted at step 16, and a block never measured is then predicted exactly; plain ones at step 1."""
    rng = np.random.default_rng(step)
    def block() -> Block:
        cin, cout, btn = (8 * int(v) for v in rng.integers(2, 40, 3))
        return Block(K1KXK1, cin, cout, int(rng.choice([1, 2])), int(rng.choice([3, 5])), int(rng.integers(1, 4)), btn)
    coef = rng.uniform(0.001, 0.01, len(FEATURES))
    def latency(b: Block, size: int) -> float:
        return float(block_features(b, size, size, channel_step=step) @ coef)
    placed = [(block(), int(size)) for size in rng.choice([14, 28, 56], 40)]
    predictor = build_predictor(SIZE, "backbone", 1, [(b, s, s, latency(b, s)) for b, s in placed], [])
    assert predictor.channel_step == step and predictor.to_dict()["channel_step"] == step
    unseen = block()
    assert predictor.block_ms(unseen, 28, 28) == pytest.approx(latency(unseen, 28), rel=1e-6)
    stem = Block(STEM, 3, 20, 2, 3)
    assert (computed_as(stem, 16).cin, computed_as(stem, 16).cout) == (3, 32)


def test_correction_is_fitted_and_measured_networks_are_exact():
    rng = np.random.default_rng(1)
    placed = block_inputs(TINY, SIZE)
    blocks = [(b, h, w, 0.1 + float(rng.random())) for b, h, w in placed]
    networks = [Structure(TINY.blocks[:-1] + (Block(K1KXK1, 64, c, 2, 3, d, 24),)) for c in (64, 96, 128) for d in (1, 2)]
    other = Structure(TINY.blocks[:-1] + (Block(K1KXK1, 64, 160, 2, 5, 3, 40),))
    # A detector: a scale on the blocks, the fixed neck and head, and the lateral convs.
    base = build_predictor(SIZE, "detector", 1, blocks, [])
    truth = [(s, 1.1 * base.raw_ms(s) + 0.5 + 0.01 * base.correction_features(s)[2]) for s in networks]
    fitted = base.with_correction(truth)
    assert fitted.correction == pytest.approx((1.1, 0.5, 0.01), rel=1e-6)
    assert fitted.predict(other) == pytest.approx(np.dot((1.1, 0.5, 0.01), base.correction_features(other)))
    assert fitted.predict(networks[0]) == truth[0][1] and fitted.measured(other) is None
    # A backbone: its blocks are the whole network, so only a scale.
    base = build_predictor(SIZE, "backbone", 1, blocks, [])
    fitted = base.with_correction([(s, 1.1 * base.raw_ms(s)) for s in networks])
    assert fitted.correction == pytest.approx((1.1,), rel=1e-6)
    assert fitted.predict(other) == pytest.approx(1.1 * base.raw_ms(other))


def test_verification_goes_down_to_the_seed_when_no_top_candidate_fits(tmp_path):
    """Candidates the predictor put within the budget but that measure over it leave the population;
    the search still ends with a measured winner within the budget (here the seed itself)."""
    measurer = open_measurer(TARGET, str(tmp_path / "c.sqlite"), FAST)
    session = LatencySession(measurer, "k1kxk1", TINY, SIZE, "backbone", walks=2)
    predictor = session.prepare()
    seed_ms = predictor.predict(TINY)
    wide = [Structure(tuple(replace(b, cout=b.cout * f, cin=b.cin if i == 0 else b.cin * f, btn=b.btn * f)
                            for i, b in enumerate(TINY.blocks))) for f in (4, 8)]
    population = Population(4)
    for seq, structure in enumerate(wide, 1):
        cost = compute_cost(structure, SIZE)
        population.offer(Member(1000.0 + seq, seq, structure, cost.params, cost.flops, cost.layers))
    state = SearchState(SearchSettings(image_size=SIZE), TINY, population)
    budget = LatencyBudget(seed_ms * 1.001, replace(predictor, correction=(0.01,)))   # far too optimistic
    verification = verify_top(state, budget, session, top=1)
    # The best measures over; the rest go with it once the predictor is refitted on it, down to the seed.
    assert verification.rows[0].structure == wide[1] and verification.rows[-1].structure == TINY
    assert [row.within_budget for row in verification.rows] == [False] * (len(verification.rows) - 1) + [True]
    assert verification.winner.structure == TINY and verification.winner.measured_ms == seed_ms
    assert [m.structure for m in state.population.members] == [TINY]
    measurer.close()


def test_pareto_front():
    points = [(10, 5.0), (12, 6.0), (11, 7.0), (9, 4.0), (12, 5.5), (13, 9.0)]
    assert sorted(pareto_front(points)) == [0, 3, 4, 5]


def test_session_profile_plan_is_deterministic_and_predicts(tmp_path):
    measurer = open_measurer(TARGET, str(tmp_path / "c.sqlite"), FAST)
    session = LatencySession(measurer, "k1kxk1", TINY, SIZE, "backbone", walks=2)
    again = LatencySession(measurer, "k1kxk1", TINY, SIZE, "backbone", walks=2)
    assert session.plan == again.plan and session.plan.networks[0] == TINY
    # The whole networks are the seed and walks from it: distinct, of the seed's shape, and every
    # block of them is in the plan, so the correction is fitted on networks the blocks predict exactly.
    walks = session.plan.networks[1:]
    assert len(walks) == 2 and len({w.key() for w in session.plan.networks}) == 3
    planned = {(b.key(), h, w) for b, h, w in session.plan.blocks}
    assert planned == {(b.key(), h, x) for s in session.plan.networks for b, h, x in block_inputs(s, SIZE)}
    assert all(len(w.blocks) == len(TINY.blocks) for w in walks)
    predictor = session.prepare()
    assert predictor.predict(TINY) == measurer.networks([TINY], SIZE, "backbone")[0]
    measured_before = measurer.counters.measured
    again.prepare()
    # Everything came from the cache: what a measurer measured is final for it, even a measurement
    # that never got quiet visits (the next measurer measures those again).
    assert measurer.counters.measured == measured_before
    measurer.close()


# ---- the CLI -------------------------------------------------------------------------------------------


def test_budget_below_the_seed_is_one_line_naming_both(tmp_path, tiny_file, monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "search", "--latency-ms", "0.001", "--init", tiny_file, *CLI_LATENCY,
                           "--latency-cache", tmp_path / "c.sqlite", "--iterations", "10", "--out", tmp_path / "o")
    assert code == 2
    line = err.strip()
    assert len(line.splitlines()) == 1
    assert "--latency-ms: the seed's measured latency" in line and "exceeds the budget 0.001 ms" in line


def test_unreachable_backend_is_one_line(tmp_path, tiny_file, monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "search", "--latency-ms", "5", "--backend", "tensorrt", "--init",
                           tiny_file, *CLI_LATENCY, "--latency-cache", tmp_path / "c.sqlite", "--iterations", "10",
                           "--out", tmp_path / "o")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "TensorRT" in err
    assert "maedet-deploy[tensorrt]" in err     # printed as text, not taken for rich markup


def test_tiny_latency_search_winner_measures_within_budget_and_warm_cache_repeats(tmp_path, tiny_file, monkeypatch,
                                                                                  capsys):
    def search(*extra) -> None:
        code, out, err = run_cli(monkeypatch, capsys, *extra)
        assert code == 0, out + err

    cache = tmp_path / "c.sqlite"
    measurer = open_measurer(TARGET, str(cache), TimingSettings(patience=0.0, round_s=ROUND_S))
    seed_ms = measurer.networks([TINY], SIZE, "backbone")[0]
    measurer.close()
    budget = f"{2 * seed_ms:.4f}"
    args = ["search", "--latency-ms", budget, "--init", tiny_file, *CLI_LATENCY, "--latency-cache", cache,
            "--iterations", "1280", "--population", "8", "--latency-check-every", "2", "--verify-top", "3"]
    search(*args, "--out", tmp_path / "a")
    report = json.loads((tmp_path / "a" / "report.json").read_text())["latency"]
    winner = load_structure(tmp_path / "a" / "best_structure.json")
    entry = LatencyCache(cache, report["device"]["fingerprint_id"], {}, TARGET.cache_key()).get(
        network_item(winner, "backbone", SIZE))
    measured = entry.latency_ms
    assert ROUND_S <= entry.details["stats"]["wall_s"] < 2 * ROUND_S   # --round-s reached the timing loop
    assert measured == report["winner"]["measured_ms"] <= float(budget)
    assert report["guard"]["checks"] >= 1 and report["measurements"]["measured"] > 0
    assert set(report["time_s"]) >= {"scoring", "predicting", "measuring", "profile"}
    assert len(report["verified"]) == 3 and measured in [r["measured_ms"] for r in report["verified"]]
    judged = [r for r in report["verified"] if not r["in_sample"] and not r["contended"]]
    assert report["predictor"]["verified_out_of_sample"]["count"] == len(judged)
    pareto = json.loads((tmp_path / "a" / "pareto.json").read_text())["members"]
    assert all(r["measured_ms"] is not None for r in pareto if r["on_front"])
    assert (tmp_path / "a" / "pareto.png").stat().st_size > 0

    # A warm cache: only measurements that never got quiet visits are measured again; with none of
    # those, nothing is, and workers (rebuilt after every guard check) change nothing.
    stale = contended_rows(cache)
    search(*args, "--workers", "2", "--out", tmp_path / "b")
    warm = json.loads((tmp_path / "b" / "report.json").read_text())["latency"]["measurements"]
    assert warm["remeasured"] == stale and warm["cached"] > 0
    if not stale:
        assert warm["measured"] == 0 and load_structure(tmp_path / "b" / "best_structure.json") == winner

    # Resuming replays the guard's checks from the checkpoint: it ends where an uninterrupted run does
    # (when every run read the same final measurements).
    longer = [*args[:args.index("--iterations")], "--iterations", "2048", *args[args.index("--iterations") + 2:]]
    search(*longer, "--out", tmp_path / "a", "--resume")
    stale += contended_rows(cache)
    search(*longer, "--out", tmp_path / "c")
    checks = lambda out: json.loads((out / "report.json").read_text())["latency"]["guard"]["checks"]
    assert checks(tmp_path / "a") >= 3 and checks(tmp_path / "c") >= 3
    if not stale:
        assert (tmp_path / "a" / "top_k.json").read_text() == (tmp_path / "c" / "top_k.json").read_text()
        assert checks(tmp_path / "a") == checks(tmp_path / "c")


def contended_rows(path) -> int:
    """Rows of a latency cache marked contended (measured again by the next search that needs them)."""
    rows = sqlite3.connect(path).execute("SELECT details FROM latency").fetchall()
    return sum(json.loads(details)["contended"] for details, in rows)
