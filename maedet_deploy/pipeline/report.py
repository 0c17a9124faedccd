"""The pipeline's report: one markdown page (and the same content as HTML) a user
can show a colleague, built only from the stages' JSON summaries."""

from __future__ import annotations

import html
from typing import Any, Sequence

from ..format import human


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def render_markdown(summary: dict[str, Any]) -> str:
    search, best = summary["search"], summary["search"]["best"]
    latency = search["latency"]
    lines = [f"# maedet-deploy report: `{summary['out']}`", "",
             f"Latency budget **{summary['latency_ms']:g} ms** ({latency['scope']} at "
             f"{summary['image_size']}x{summary['image_size']}, batch {summary['batch']}, "
             f"{latency['backend']}). Created {summary['created']}.", "",
             "## Chosen backbone", ""]
    lines += _table(["score", "params", "FLOPs (MACs)", "conv layers", "measured latency", "predicted", "budget"],
                    [[f"{best['score']:.2f}", human(best["params"]), human(best["flops"]), best["layers"],
                      f"{latency['measured_ms']:.2f} ms", f"{latency['predicted_ms']:.2f} ms",
                      f"{summary['latency_ms']:g} ms"]])
    lines += ["", "Blocks (`best_structure.json`):", ""]
    lines += _table(["#", "class", "in", "out", "s", "k", "L", "btn"],
                    [[i, b["class"], b["in"], b["out"], b["s"], b["k"], b.get("L", "-"), b.get("btn", "-")]
                     for i, b in enumerate(best["blocks"])])
    lines += ["", f"Search: {search['candidates']:,} candidates in {search['wall_seconds']:.1f} s; "
                  f"{latency.get('measurements', 0)} latency measurements "
                  f"({latency.get('measure_seconds', 0.0):.1f} s measuring).", ""]
    if summary.get("pareto_png"):
        lines += ["## Score vs measured latency (final population)", "", f"![Pareto front]({summary['pareto_png']})", ""]
    lines += ["## Latency (same bench loop, same input, one run)", ""]
    lines += _table(["model", "median ms", "p90 ms", "p99 ms", "images/s", "CV", "vs ResNet-50 FP32"],
                    [[row["runner"], f"{row['median_ms']:.2f}", f"{row['p90_ms']:.2f}", f"{row['p99_ms']:.2f}",
                      f"{row['images_per_s']:.1f}", f"{100 * row['cv']:.1f}%", f"{row['speedup_vs_baseline']:.2f}x"]
                     for row in summary["bench"]["rows"]])
    for warning in summary["bench"].get("warnings", []):
        lines.append(f"\n> warning: {warning}")
    calib = summary["calibration"]
    lines += ["", "## INT8 calibration", "",
              f"{calib['method']} calibration on {calib['num_images']} images, evaluated on "
              f"{calib['holdout_images']} held-out images; layers kept in float: {calib['float_layers']}.", ""]
    lines += _table(["agreement mAP@0.5", "agreement mAP@0.5:0.95", "min output cosine"],
                    [[_fmt(calib.get("map50")), _fmt(calib.get("map")), _fmt(calib.get("min_cosine"))]])
    lines += ["", "## Device", ""]
    lines += _table(["field", "value"], [[k, v] for k, v in summary["fingerprint"].items()
                                         if not isinstance(v, (dict, list))])
    lines += ["", "## Reproduce", "", "```bash", *summary["commands"], "```", ""]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def render_html(markdown: str) -> str:
    """Tables, headings, images and code blocks of our own markdown; nothing more is needed."""
    out, in_code, in_table = [], False, False
    for line in markdown.splitlines():
        if line.startswith("```"):
            out.append("</pre>" if in_code else "<pre>")
            in_code = not in_code
            continue
        if in_code:
            out.append(html.escape(line))
            continue
        if line.startswith("|"):
            cells = [html.escape(c.strip()) for c in line.strip("|").split("|")]
            if set("".join(cells)) <= {"-"}:
                continue
            tag = "th" if not in_table else "td"
            if not in_table:
                out.append("<table>")
                in_table = True
            out.append("<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>")
            continue
        if in_table:
            out.append("</table>")
            in_table = False
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{html.escape(line.lstrip('# '))}</h{level}>")
        elif line.startswith("![") and "](" in line:
            alt, src = line[2:].split("](", 1)
            out.append(f'<img alt="{html.escape(alt)}" src="{html.escape(src.rstrip(")"))}">')
        elif line.startswith("> "):
            out.append(f"<blockquote>{html.escape(line[2:])}</blockquote>")
        elif line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        out.append("</table>")
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}img{max-width:100%}")
    return f"<!doctype html><meta charset=utf-8><style>{style}</style>\n" + "\n".join(out) + "\n"
