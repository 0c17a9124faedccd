"""Small structures shared by tests that export and time whole networks."""

from maedet_deploy.structure import K1KXK1, STEM, Block, Structure

# Five stages at 64x64 in a few milliseconds: fast to export, measure and calibrate.
TINY = Structure((
    Block(STEM, 3, 8, 2, 3), Block(K1KXK1, 8, 16, 2, 3, 1, 8), Block(K1KXK1, 16, 32, 2, 3, 1, 8),
    Block(K1KXK1, 32, 48, 2, 3, 1, 16), Block(K1KXK1, 48, 64, 1, 3, 1, 16), Block(K1KXK1, 64, 96, 2, 3, 1, 24)))
