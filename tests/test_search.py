import json
import random
import signal
import subprocess
import sys
import time

import pytest

from cli_helpers import cli
from maedet_deploy.errors import MaedetError
from maedet_deploy.search.budgets import cost_budgets
from maedet_deploy.search.evolution import SearchSettings, load_checkpoint, new_state, run_search
from maedet_deploy.search.score import entropy_score
from maedet_deploy.search.space import Mutator, get_space
from maedet_deploy.structure import K1DWK1, STEM, Block, Structure, compute_cost, load_structure
from maedet_deploy.zoo import get_structure


def seed_for(kind: str) -> Structure:
    blocks = [Block(STEM, 3, 16, 2, 3)]
    for cout, stride in ((32, 2), (64, 2), (96, 2), (128, 1), (160, 2)):
        btn = cout * 2 if kind == K1DWK1 else cout // 2
        blocks.append(Block(kind, blocks[-1].cout, cout, stride, 3, 1, btn))
    return Structure(tuple(blocks))


@pytest.mark.parametrize("space", ["k1kxk1", "kxkx", "k1dwk1"])
def test_mutations_keep_every_constraint(space):
    spec = get_space(space)
    seed = get_structure("maedet-seed") if space == "k1kxk1" else seed_for(spec.kind)
    mutator = Mutator(spec, seed, 96, max_layers=60)
    rng = random.Random(7)
    structure = seed
    changed = 0
    for step in range(3000):
        child = mutator.mutate(structure, rng, fine=step > 2000)
        changed += child != structure
        structure = child
        blocks = child.blocks
        assert [b.stride for b in blocks] == [b.stride for b in seed.blocks]
        assert child.layers <= max(60, seed.layers)
        assert blocks[1].depth <= 3
        for index, block in enumerate(blocks):
            assert block.cout % 8 == 0 and block.cout <= spec.max_channels
            assert block.kernel * 1.5 <= 96 / 2 ** sum(b.stride == 2 for b in blocks[:index]) or block.kernel == 1
            if block.kind != STEM and spec.kind != K1DWK1:
                assert block.btn <= block.cout and block.btn >= 8
    assert changed > 750  # clamps at caps make some mutations no-ops, as in the reference


def test_mutations_without_a_layer_budget_stay_inside_the_structure_limits():
    from dataclasses import replace

    from maedet_deploy.structure.limits import Limits

    limits = Limits()
    seed = get_structure("maedet-seed")
    deep = Structure(tuple(replace(b, depth=limits.depth - 1) if i == 2 else b for i, b in enumerate(seed.blocks)))
    mutator = Mutator(get_space("k1kxk1"), deep, 64)
    rng, structure = random.Random(1), deep
    for _ in range(400):
        structure = mutator.mutate(structure, rng)
        assert max(b.depth for b in structure.blocks) <= limits.depth and structure.layers <= limits.layers
    with pytest.raises(MaedetError) as error:
        get_space("k1kxk1", max_channels=limits.channels + 8)
    assert error.value.setting == "max_channels"


def test_fine_phase_only_changes_widths():
    seed = get_structure("maedet-seed")
    mutator = Mutator(get_space("k1kxk1"), seed, 480)
    rng = random.Random(3)
    for _ in range(500):
        child = mutator.mutate(seed, rng, fine=True)
        assert [(b.kernel, b.depth) for b in child.blocks] == [(b.kernel, b.depth) for b in seed.blocks]


def small_settings(**changes) -> SearchSettings:
    return SearchSettings(**{"image_size": (224, 224), "iterations": 3000, "population": 32, "seed": 5, **changes})


def run(settings, budgets, **kwargs):
    return run_search(new_state(settings, get_structure("maedet-seed"), budgets), budgets, **kwargs)


def test_search_improves_and_respects_budgets():
    budgets = cost_budgets(flops=3e9, layers=60, params=15e6)
    state = run(small_settings(), budgets)
    best = state.population.best()
    assert best.score > entropy_score(get_structure("maedet-seed"))
    for member in state.population.members:
        cost = compute_cost(member.structure, 224)
        assert cost.flops <= 3e9 and cost.layers <= 60 and cost.params <= 15e6
        assert member.score == pytest.approx(entropy_score(member.structure))
    assert len({m.structure.key() for m in state.population.members}) == len(state.population)
    assert state.counters.candidates == 3000


def test_same_seed_same_result_and_workers_do_not_change_it():
    budgets = cost_budgets(flops=3e9, layers=60)
    one = run(small_settings(), budgets)
    again = run(small_settings(), budgets)
    parallel = run(small_settings(), budgets, workers=2)
    other_seed = run(small_settings(seed=6), budgets)
    population = lambda s: [m.to_dict() for m in s.population.top(32)]
    assert population(one) == population(again) == population(parallel)
    assert population(one) != population(other_seed)


def test_resume_after_interruption_ends_like_an_uninterrupted_run(tmp_path):
    budgets = cost_budgets(flops=3e9, layers=60)
    settings = small_settings(iterations=4000)
    full = run(settings, budgets)

    class Stop(Exception):
        pass

    def stop_after_some(state):
        if state.batch_index == 6:
            raise Stop

    with pytest.raises(Stop):
        run(settings, budgets, checkpoint_dir=tmp_path, checkpoint_every=0, on_batch=stop_after_some)
    resumed = load_checkpoint(tmp_path, settings)
    assert 0 < resumed.counters.candidates < 4000
    run_search(resumed, budgets, checkpoint_dir=tmp_path)
    assert [m.to_dict() for m in resumed.population.top(32)] == [m.to_dict() for m in full.population.top(32)]
    assert resumed.improvements == full.improvements


def test_seed_over_budget_says_which_and_by_how_much():
    with pytest.raises(MaedetError, match=r"flops budget: .*over by .*%"):
        new_state(small_settings(), get_structure("maedet-seed"), cost_budgets(flops=1e9))


def test_cli_outputs_and_kill_resume(tmp_path):
    args = ["--flops", "3e9", "--layers", "60", "--image-size", "224", "--population", "32", "--seed", "1"]
    reference = tmp_path / "reference"
    result = cli("search", *args, "--iterations", "20000", "--out", reference)
    assert result.returncode == 0, result.stderr
    for name in ("best_structure.json", "best_structure.txt", "top_k.json", "search.jsonl", "report.json",
                 "progress.png"):
        assert (reference / name).stat().st_size > 0
    report = json.loads((reference / "report.json").read_text())
    assert report["candidates"] == 20000 and report["candidates_per_second"] > 0
    assert report["best"]["score"] == pytest.approx(entropy_score(load_structure(reference / "best_structure.json")))
    assert load_structure(reference / "best_structure.txt") == load_structure(reference / "best_structure.json")
    lines = (reference / "search.jsonl").read_text().splitlines()
    scores = [json.loads(line)["score"] for line in lines]
    assert scores == sorted(scores) and scores[-1] == report["best"]["score"]

    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "maedet_deploy.cli.main", "search", *args,
                                "--iterations", "20000", "--out", str(killed), "--checkpoint-every", "0.1"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not (killed / "checkpoint.json").exists() and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "report.json").exists()
    result = cli("search", *args, "--iterations", "20000", "--out", killed, "--resume")
    assert result.returncode == 0, result.stderr
    assert (killed / "best_structure.json").read_text() == (reference / "best_structure.json").read_text()


@pytest.mark.parametrize("args, message", [
    (["--flops", "1e9"], "flops budget"),
    (["--space", "nope"], "unknown search space"),
    (["--space", "kxkx"], "--space: the seed's block 1"),
    (["--alpha", "1,2"], "alpha has 2"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, args, message):
    result = cli("search", "--iterations", "10", "--out", tmp_path / "o", *args)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_unwritable_out_and_corrupt_checkpoint(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = cli("search", "--iterations", "300", "--out", blocker / "sub")
    assert result.returncode == 2 and "cannot write" in result.stderr
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.json").write_text('{"format": "maedet-search-checkpoint/1", "settings": 3}')
    result = cli("search", "--iterations", "300", "--out", tmp_path / "run", "--resume")
    assert result.returncode == 2 and "corrupt checkpoint" in result.stderr
    assert (tmp_path / "run" / "checkpoint.json").read_text().startswith('{"format"')
    before = (tmp_path / "run" / "checkpoint.json").read_text()
    result = cli("search", "--iterations", "300", "--out", tmp_path / "run")     # no --resume: never replaced
    assert result.returncode == 2 and result.stderr.startswith("error: --resume:") and "earlier search" in result.stderr
    assert (tmp_path / "run" / "checkpoint.json").read_text() == before
