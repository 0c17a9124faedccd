import pytest

from maedet_deploy.structure import Block, Structure, compute_cost, stage_ends
from maedet_deploy.zoo import get_structure


@pytest.mark.parametrize("name, paper_millions", [("maedet-s", 21.2), ("maedet-m", 25.8), ("maedet-l", 43.9)])
def test_zoo_params_match_the_paper(name, paper_millions):
    assert abs(compute_cost(get_structure(name), 480).params / 1e6 - paper_millions) <= 0.1


def test_stem_flops_by_hand():
    stem = Structure((Block("ConvKXBNRELU", 3, 8, 2, 3),))
    # 16x16 output: conv MACs 3*8*9 per pixel, BN 2*8, ReLU 8.
    assert compute_cost(stem, 32).flops == (3 * 8 * 9 + 2 * 8 + 8) * 16 * 16
    assert compute_cost(stem, 32).params == 3 * 8 * 9 + 2 * 8


def test_k1kxk1_unit_by_hand():
    block = Block("SuperResK1KXK1", 8, 16, 2, 3, depth=1, btn=8)
    structure = Structure((Block("ConvKXBNRELU", 3, 8, 1, 1), block))
    stem = compute_cost(Structure(structure.blocks[:1]), 8)
    cost = compute_cost(structure, 8)
    pin, pout = 64, 16
    conv1 = (8 * 8 + 16) * pin
    conv2 = (8 * 8 * 9 + 16) * pout
    conv3 = (8 * 16 + 32) * pout
    relu = 8 * pin + 8 * pout + 16 * pout
    pool = 8 * pin
    proj = (8 * 16 + 32) * pout + 16 * pout
    assert cost.flops - stem.flops == conv1 + conv2 + conv3 + relu + pool + proj
    params = (8 * 8 + 16) + (8 * 8 * 9 + 16) + (8 * 16 + 32) + (8 * 16 + 32)
    assert cost.params - stem.params == params
    assert cost.layers == 1 + 3


def test_odd_sizes_use_ceil_division():
    structure = get_structure("maedet-seed")
    cost = compute_cost(structure, (97, 130))
    assert [(s.height, s.width) for s in cost.stages] == [(49, 65), (25, 33), (13, 17), (7, 9), (4, 5)]


def test_flops_scale_with_pixels_at_divisible_sizes():
    structure = get_structure("maedet-m")
    small, large = compute_cost(structure, 320).flops, compute_cost(structure, 640).flops
    assert large == 4 * small


def test_stages_follow_stride_two_blocks():
    seed = get_structure("maedet-seed")
    assert stage_ends(seed) == [0, 1, 2, 4, 5]
    cost = compute_cost(seed, 480)
    assert [s.channels for s in cost.stages] == [32, 256, 512, 1024, 2048]
    assert [s.reduction for s in cost.stages] == [2, 4, 8, 16, 32]
    assert [s.units for s in cost.stages] == [1, 2, 3, 5, 6]
    assert cost.layers == 1 + 5 * 3


def test_layer_counts_per_block_type():
    stem = Block("ConvKXBNRELU", 3, 16, 2, 3)
    for kind, per_unit in (("SuperResK1KXK1", 3), ("SuperResKXKX", 2), ("SuperResK1DWK1", 3)):
        structure = Structure((stem, Block(kind, 16, 32, 2, 3, depth=4, btn=16)))
        assert compute_cost(structure, 64).layers == 1 + 4 * per_unit
