import json
import random

import pytest

from maedet_deploy.structure import K1DWK1, K1KXK1, KXKX, STEM, Block, Structure
from nets import TINY


def random_structure(rng: random.Random, kind: str = K1KXK1, max_ch: int = 64, stages: int = 5) -> Structure:
    """A random valid structure: a stem then `stages - 1` stride-2 super blocks (plus an
    optional stride-1 block), channels small enough to build torch modules quickly."""
    cin = rng.choice([3, 4])
    blocks = [Block(STEM, cin, rng.randrange(8, max_ch + 1, 8), 2, rng.choice([3, 5]))]
    for index in range(stages - 1):
        for stride in ([2, 1] if rng.random() < 0.3 else [2]):
            out = rng.randrange(8, max_ch + 1, 8)
            blocks.append(Block(kind, blocks[-1].cout, out, stride, rng.choice([1, 3, 5]),
                                rng.randint(1, 3), rng.randrange(8, max_ch + 1, 8)))
    return Structure(tuple(blocks))


@pytest.fixture
def rng() -> random.Random:
    return random.Random(1234)


SUPER_KINDS = (K1KXK1, KXKX, K1DWK1)


@pytest.fixture
def tiny_file(tmp_path):
    """`nets.TINY` as a structure file, as users pass one to --init."""
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps({"blocks": TINY.to_dicts()}))
    return path
