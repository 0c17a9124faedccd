import json

import pytest

from maedet_deploy.structure import (Block, Structure, StructureError, load_structure, parse_structure,
                                     save_structure)
from maedet_deploy.zoo import get_structure, list_structures, resolve_structure
from maedet_deploy.errors import MaedetError


def test_validation_names_block_and_field():
    blocks = [{"class": "ConvKXBNRELU", "in": 3, "out": 16, "s": 2, "k": 3},
              {"class": "SuperResK1KXK1", "in": 16, "out": 32, "s": 2, "k": 3, "L": 1, "btn": 0}]
    with pytest.raises(StructureError, match=r"block 1 \(SuperResK1KXK1\): btn=0 must be >= 8"):
        Structure.from_dicts(blocks)


@pytest.mark.parametrize("change, message", [
    ({"s": 3}, "s=3 must be 1 or 2"),
    ({"k": 4}, "k=4 must be an odd number"),
    ({"L": 0}, "L=0 must be >= 1"),
    ({"in": 8}, "in=8 must equal the previous block's out=16"),
    ({"class": "Nope"}, "unknown class 'Nope'"),
    ({"out": 2.5}, "out=2.5 must be an integer"),
    ({"typo": 1}, "unknown field"),
])
def test_each_rule_is_enforced(change, message):
    block = {"class": "SuperResK1KXK1", "in": 16, "out": 32, "s": 2, "k": 3, "L": 1, "btn": 8, **change}
    with pytest.raises(StructureError, match=message):
        Structure.from_dicts([{"class": "ConvKXBNRELU", "in": 3, "out": 16, "s": 2, "k": 3}, block])


def test_structure_is_immutable_and_hashable():
    structure = get_structure("maedet-m")
    with pytest.raises(AttributeError):
        structure.blocks[0].cout = 8
    assert {structure.key(): 1}[get_structure("maedet-m").key()] == 1


def test_json_round_trip(tmp_path):
    structure = get_structure("maedet-s")
    path = tmp_path / "s.json"
    save_structure(path, structure, name="copy")
    assert json.loads(path.read_text())["name"] == "copy"
    assert load_structure(path) == structure


def test_reference_text_format_round_trip(tmp_path):
    structure = get_structure("maedet-l")
    path = tmp_path / "best.txt"
    save_structure(path, structure)
    assert path.read_text().startswith("{'best_structures'")
    assert load_structure(path) == structure


def test_reference_file_with_inner_class_loads():
    text = """{ 'best_structures':[ [
        {'class': 'ConvKXBNRELU', 'in': 3, 'out': 32, 's': 2, 'k': 3},
        {'class': 'SuperResK1KXK1', 'in': 32, 'out': 48, 's': 2, 'k': 5, 'L': 2, 'btn': 32,
         'inner_class': 'ResK1KXK1'}]],
    'space_arch': 'CnnNet'}"""
    structure = parse_structure(text)
    assert [b.cout for b in structure.blocks] == [32, 48]


def test_code_in_a_structure_file_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    text = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    with pytest.raises(StructureError, match="not JSON"):
        parse_structure(text)
    assert not marker.exists()


def test_bare_block_list_json_is_accepted():
    text = json.dumps(get_structure("maedet-seed").to_dicts())
    assert parse_structure(text) == get_structure("maedet-seed")


def test_zoo_lists_expected_names_and_resolves_files(tmp_path):
    names = {entry.name for entry in list_structures()}
    assert {"maedet-s", "maedet-m", "maedet-l", "maedet-seed", "resnet50"} <= names
    path = tmp_path / "x.json"
    save_structure(path, get_structure("resnet50"))
    assert resolve_structure(str(path)) == get_structure("resnet50")
    with pytest.raises(MaedetError, match="neither a zoo name"):
        resolve_structure("no-such-thing")


def test_empty_structure_is_an_error():
    with pytest.raises(StructureError, match="no blocks"):
        Structure(())
    with pytest.raises(StructureError, match="stem"):
        Structure((Block("ConvKXBNRELU", 3, 8, 2, 3, depth=2),))
