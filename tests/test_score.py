import math

import pytest

from maedet_deploy.errors import MaedetError
from maedet_deploy.search.score import entropy_score, stage_entropies
from maedet_deploy.structure import Block, Structure
from maedet_deploy.zoo import get_structure


def h(x: float) -> float:
    return math.log(math.sqrt(x))


def test_seed_score_by_the_formula():
    # Per-unit log-std gains of method.md section 2, written out for the seed.
    u = [h(3 * 9),
         h(32) + h(64 * 9) + h(64),
         h(256) + h(128 * 9) + h(128),
         h(512) + h(256 * 9) + h(256),
         h(768) + h(256 * 9) + h(256),
         h(1024) + h(512 * 9) + h(512)]
    expected = [u[0] + math.log(32), sum(u[:2]) + math.log(256), sum(u[:3]) + math.log(512),
                sum(u[:5]) + math.log(1024), sum(u) + math.log(2048)]
    got = stage_entropies(get_structure("maedet-seed"))
    assert got == pytest.approx(expected, rel=1e-12)
    assert entropy_score(get_structure("maedet-seed")) == pytest.approx(
        expected[2] + expected[3] + 6 * expected[4])


def test_repeated_units_use_out_channels():
    stem = Block("ConvKXBNRELU", 3, 8, 2, 3)
    for kind, unit in (
        ("SuperResK1KXK1", lambda cin: h(cin) + h(16 * 25) + h(16)),
        ("SuperResKXKX", lambda cin: h(cin * 25) + h(16 * 25)),
        ("SuperResK1DWK1", lambda cin: h(cin) + h(25) + h(16)),
    ):
        structure = Structure((stem, Block(kind, 8, 24, 2, 5, depth=3, btn=16)))
        expected = h(27) + unit(8) + 2 * unit(24) + math.log(24)
        assert stage_entropies(structure)[-1] == pytest.approx(expected, rel=1e-12)


def test_alpha_must_match_stage_count():
    with pytest.raises(MaedetError, match="5 stages but alpha has 3"):
        entropy_score(get_structure("maedet-m"), alpha=(1, 1, 1))


def test_published_nets_outscore_the_seed_and_resnet50():
    score = {name: entropy_score(get_structure(name)) for name in ("maedet-seed", "resnet50", "maedet-s", "maedet-m", "maedet-l")}
    assert score["maedet-seed"] < score["resnet50"] < score["maedet-s"] < score["maedet-m"] < score["maedet-l"]
