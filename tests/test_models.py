import pytest
import torch
import torchvision
from conftest import SUPER_KINDS
from hypothesis import given, settings
from hypothesis import strategies as st

from maedet_deploy.errors import MaedetError
from maedet_deploy.models import (Backbone, ConvBN, ResidualUnit, create_backbone, create_detector,
                                  fold_batchnorm)
from maedet_deploy.structure import K1DWK1, K1KXK1, KXKX, STEM, Block, Structure, compute_cost, stage_ends
from maedet_deploy.zoo import get_structure

torch.set_num_threads(2)
channels = st.integers(1, 6).map(lambda m: 8 * m)


@st.composite
def structures(draw, kind: str) -> Structure:
    """Small random valid structures: any strides, kernels 1/3/5, in==out or not."""
    blocks = [Block(STEM, draw(st.sampled_from([1, 3, 4])), draw(channels), draw(st.sampled_from([1, 2])),
                    draw(st.sampled_from([1, 3, 5])))]
    for _ in range(draw(st.integers(1, 4))):
        cout = draw(st.one_of(st.just(blocks[-1].cout), channels))
        blocks.append(Block(kind, blocks[-1].cout, cout, draw(st.sampled_from([1, 2])),
                            draw(st.sampled_from([1, 3, 5])), draw(st.integers(1, 3)), draw(channels)))
    return Structure(tuple(blocks))


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("kind", SUPER_KINDS)
def test_analytic_params_equal_module_params(kind):
    @settings(max_examples=40, deadline=None, derandomize=True)
    @given(structures(kind))
    def check(structure):
        stages = len(stage_ends(structure))
        backbone = Backbone(structure, out_indices=range(stages))
        assert n_params(backbone) == compute_cost(structure).params

    check()


@pytest.mark.parametrize("name", ["maedet-seed", "maedet-s", "maedet-m", "maedet-l"])
def test_zoo_params_equal_cost_model(name):
    assert n_params(Backbone(get_structure(name))) == compute_cost(get_structure(name)).params


def test_resnet50_matches_torchvision_without_fc():
    reference = torchvision.models.resnet50(weights=None)
    expected = sum(p.numel() for n, p in reference.named_parameters() if not n.startswith("fc."))
    ours = n_params(create_backbone("resnet50"))
    assert abs(ours - expected) <= 0.01 * expected
    assert ours == expected  # the zoo entry is built to match exactly


def _mixed_structure() -> Structure:
    return Structure((Block(STEM, 3, 16, 2, 3), Block(KXKX, 16, 16, 2, 3, 2, 8),
                      Block(K1DWK1, 16, 24, 2, 5, 2, 32), Block(K1DWK1, 24, 24, 1, 3, 1, 16),
                      Block(K1KXK1, 24, 40, 2, 3, 2, 16), Block(KXKX, 40, 48, 2, 5, 1, 16)))


@pytest.mark.parametrize("structure", [get_structure("maedet-seed"), _mixed_structure()], ids=["seed", "mixed"])
def test_features_at_odd_size_match_cost_model(structure):
    cost = compute_cost(structure, (97, 130))
    backbone = Backbone(structure, out_indices=range(len(cost.stages))).eval()
    with torch.no_grad():
        features = backbone(torch.randn(1, 3, 97, 130))
    assert [tuple(f.shape[1:]) for f in features] == [(s.channels, s.height, s.width) for s in cost.stages]
    assert [(i["num_chs"], i["reduction"]) for i in backbone.feature_info] == \
        [(s.channels, s.reduction) for s in cost.stages]


def test_default_out_indices_are_c3_c5():
    backbone = create_backbone("maedet-seed")
    assert [i["stage"] for i in backbone.feature_info] == ["C3", "C4", "C5"]
    assert [i["reduction"] for i in backbone.feature_info] == [8, 16, 32]
    assert backbone.feature_info[1]["module"] == "blocks.4"  # the seed's stride-1 block closes C4


def test_bad_out_indices_is_a_user_error():
    with pytest.raises(MaedetError, match="out_indices"):
        create_backbone("maedet-seed", out_indices=(3, 5))


def test_shortcuts_follow_the_block_rules():
    def shortcut(kind, cin, cout, stride):
        structure = Structure((Block(STEM, 3, cin, 1, 3), Block(kind, cin, cout, stride, 3, 2, 8)))
        units = Backbone(structure, out_indices=(0,)).blocks[1]
        return units[0].shortcut, units[1].shortcut

    first, rest = shortcut(K1KXK1, 16, 16, 1)
    assert isinstance(first, ConvBN) and isinstance(rest, torch.nn.Identity)  # K1KXK1 unit 0 always projects
    first, _ = shortcut(KXKX, 16, 16, 2)
    assert isinstance(first, torch.nn.AvgPool2d) and first.ceil_mode
    first, _ = shortcut(K1DWK1, 16, 24, 2)
    assert [type(m) for m in first] == [torch.nn.AvgPool2d, ConvBN]
    first, _ = shortcut(K1DWK1, 16, 16, 1)
    assert isinstance(first, torch.nn.Identity)


def test_depthwise_unit_has_groups_and_stride_in_the_middle():
    structure = Structure((Block(STEM, 3, 16, 2, 3), Block(K1DWK1, 16, 24, 2, 5, 1, 32)))
    unit = Backbone(structure, out_indices=(1,)).blocks[1][0]
    assert isinstance(unit, ResidualUnit)
    convs = [layer.conv for layer in unit.body]
    assert [(c.kernel_size[0], c.stride[0], c.groups) for c in convs] == [(1, 1, 1), (5, 2, 32), (1, 1, 1)]
    assert len(unit.body[-1]) == 2  # linear projection: conv + BN, no ReLU


def test_detector_outputs_at_odd_size():
    detector = create_detector("maedet-seed", num_classes=5, image_size=(97, 130), neck_channels=32)
    with torch.no_grad():
        boxes, scores = detector(torch.randn(2, 3, 97, 130))
    points = sum(s.height * s.width for s in compute_cost(get_structure("maedet-seed"), (97, 130)).stages[2:])
    assert boxes.shape == (2, points, 4) and scores.shape == (2, points, 5)
    assert boxes[..., 0::2].min() >= 0 and boxes[..., 0::2].max() <= 130
    assert boxes[..., 1::2].min() >= 0 and boxes[..., 1::2].max() <= 97
    assert (boxes[..., 2:] >= boxes[..., :2]).all()
    assert 0 <= scores.min() and scores.max() <= 1


def test_detector_neck_sizes_itself_from_feature_info():
    detector = create_detector(_mixed_structure(), num_classes=3, image_size=96, neck_channels=16)
    assert [m[0].in_channels for m in detector.neck.lateral] == [24, 40, 48]
    assert detector.head.strides == (8, 16, 32)


def test_folding_batchnorm_keeps_the_outputs():
    detector = create_detector(_mixed_structure(), num_classes=3, image_size=64, neck_channels=16)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = detector(x)
        after = fold_batchnorm(detector)(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in detector.modules())
    for a, b in zip(before, after):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_checkpoint_round_trip_and_wrappers(tmp_path):
    detector = create_detector("maedet-seed", num_classes=3, image_size=64, neck_channels=16)
    path = tmp_path / "det.pth"
    torch.save({"model": detector.state_dict(), "epoch": 3}, path)
    loaded = create_detector("maedet-seed", num_classes=3, image_size=64, neck_channels=16, checkpoint=path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(detector(x), loaded(x)):
            assert torch.equal(a, b)
    backbone = create_backbone("maedet-seed", pretrained_checkpoint=path)  # the detector's 'backbone.' keys
    assert torch.equal(backbone.blocks[0][0].weight, detector.backbone.blocks[0][0].weight)


def test_mismatched_checkpoint_is_one_line(tmp_path):
    detector = create_detector("maedet-seed", num_classes=3, image_size=64, neck_channels=16)
    state = detector.state_dict()
    state.pop("head.scales")
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(MaedetError) as info:
        create_detector("maedet-seed", num_classes=3, image_size=64, neck_channels=16, checkpoint=path)
    message = str(info.value)
    assert "\n" not in message and "head.scales" in message and "extra.weight" in message
    with pytest.raises(MaedetError, match="shape mismatch"):
        create_detector("maedet-seed", num_classes=4, image_size=64, neck_channels=16,
                        checkpoint=_save(tmp_path, detector.state_dict()))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(MaedetError, match="cannot read checkpoint"):
        create_detector("maedet-seed", checkpoint=tmp_path / "junk.pth")


def _save(tmp_path, state) -> str:
    path = tmp_path / "plain.pth"
    torch.save(state, path)
    return str(path)
