"""`info` and `zoo`: what a structure costs and how it scores."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from ..search.score import DEFAULT_ALPHA, METHODS, check_alpha, parse_alpha, stage_entropies
from ..structure import compute_cost
from ..structure.limits import check_input_size
from ..zoo import list_structures, resolve_structure
from .common import console, human, parse_image_size, print_json

ALPHA_TEXT = ",".join(f"{a:g}" for a in DEFAULT_ALPHA)


def info(
    structure: Annotated[str, typer.Argument(help="A zoo name (see `maedet-deploy zoo`) or a structure file "
                                                  "(our JSON, or the reference tool's .txt).")],
    image_size: Annotated[str, typer.Option(help="Input size, 480 or HxW, for FLOPs and stage sizes.")] = "480",
    alpha: Annotated[str, typer.Option(help="Entropy weight per stage; must have one value per stage.")] = ALPHA_TEXT,
    method: Annotated[str, typer.Option(help=f"Score method: {' or '.join(METHODS)} (Gaussian forward pass).")] = "analytic",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
) -> None:
    """Parameters, FLOPs (MACs), conv layers, stages and entropy score of a backbone."""
    struct = resolve_structure(structure)
    size = parse_image_size(image_size)
    weights = parse_alpha(alpha)
    check_alpha(struct, weights)
    cost = check_input_size(struct, size)
    entropies = stage_entropies(struct, method, size)
    score = float(sum(a * h for a, h in zip(weights, entropies)))
    if as_json:
        data = cost.to_dict()
        data.update(structure=structure, score=score, score_method=method, alpha=list(weights),
                    blocks=struct.to_dicts())
        for stage, entropy in zip(data["stages"], entropies):
            stage["entropy"] = entropy
        print_json(data)
        return
    summary = Table(title=f"{structure} at {cost.image_size[0]}x{cost.image_size[1]}", show_header=False)
    summary.add_row("parameters", f"{cost.params:,} ({human(cost.params)})")
    summary.add_row("FLOPs (MACs)", f"{cost.flops:,} ({human(cost.flops)})")
    summary.add_row("conv layers", str(cost.layers))
    summary.add_row(f"score ({method})", f"{score:.3f}")
    console.print(summary)
    stages = Table(title="stages")
    for column in ("stage", "channels", "stride", "size", "units", "layers", "entropy", "alpha"):
        stages.add_column(column, justify="right")
    for stage, entropy, weight in zip(cost.stages, entropies, weights):
        stages.add_row(f"C{stage.index}", str(stage.channels), str(stage.reduction),
                       f"{stage.height}x{stage.width}", str(stage.units), str(stage.layers),
                       f"{entropy:.3f}", f"{weight:g}")
    console.print(stages)
    blocks = Table(title="blocks")
    for column in ("#", "class", "in", "out", "s", "k", "L", "btn"):
        blocks.add_column(column, justify="right")
    for index, block in enumerate(struct.blocks):
        blocks.add_row(str(index), block.kind, str(block.cin), str(block.cout), str(block.stride),
                       str(block.kernel), str(block.depth) if block.is_super else "-",
                       str(block.btn) if block.is_super else "-")
    console.print(blocks)


def zoo(
    image_size: Annotated[str, typer.Option(help="Input size for the FLOPs column.")] = "480",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the zoo's named structures with their cost."""
    size = parse_image_size(image_size)
    rows = []
    for entry in list_structures():
        cost = compute_cost(entry.structure, size)
        rows.append({"name": entry.name, "params": cost.params, "flops": cost.flops, "layers": cost.layers,
                     "description": entry.description})
    if as_json:
        print_json(rows)
        return
    table = Table(title=f"zoo (FLOPs at {image_size})")
    for column in ("name", "params", "FLOPs", "layers", "description"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["name"], human(row["params"]), human(row["flops"]), str(row["layers"]),
                      row["description"])
    console.print(table)
