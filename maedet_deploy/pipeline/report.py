"""The pipeline's report: one markdown page (and the same content as HTML) a user
can show a colleague, built only from the typed summary of the stages."""

from __future__ import annotations

import html
from typing import Any, Sequence

from ..bench.measure import CV_THRESHOLD
from ..format import human
from .results import BenchSummary, CalibrationResult
from .summary import PARETO_PNG, PipelineSummary


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def render_markdown(summary: PipelineSummary) -> str:
    """The report: headline, chosen backbone, latency, INT8 calibration, device, stages, commands."""
    lines = [f"# maedet-deploy report: `{summary.out}`", "", *_headline(summary), "", "## Chosen backbone", ""]
    lines += _backbone(summary)
    lines += ["## Score vs measured latency (final population)", "", f"![Pareto front]({PARETO_PNG})", ""]
    lines += _latency(summary.bench)
    lines += _calibration(summary.calibration, summary.images)
    lines += ["## Device", ""]
    lines += _table(["field", "value"], [[k, v] for k, v in summary.fingerprint.items()
                                         if v is not None and not isinstance(v, (dict, list))])
    lines += ["", "## Stages", ""]
    lines += _table(["stage", "seconds", "this run"], [[name, f"{t.seconds:.1f}", "reused" if t.reused else "ran"]
                                                      for name, t in summary.stages.items()])
    if summary.commands:
        lines += ["", "## Reproduce", "", "```bash", *summary.commands, "```"]
    return "\n".join(lines + [""])


def _headline(summary: PipelineSummary) -> list[str]:
    budget, search, base, bench = summary.budget, summary.search, summary.baseline, summary.bench
    fp32, int8 = bench.line("searched FP32", "network"), bench.line("searched INT8", "network")
    fp32_e2e = bench.line("searched FP32", "end to end")
    height, width = summary.image_size
    device = summary.fingerprint.get("gpu") or summary.fingerprint.get("cpu")
    source = (f" The budget is the {base.name} detector's measured {budget.baseline_ms:.2f} ms divided by "
              f"{budget.speedup:g}." if budget.source == "speedup" else "")
    return [f"Latency budget **{budget.latency_ms:g} ms** for the {summary.scope} at {height}x{width}, batch "
            f"{summary.batch}, on {search.target} ({device}). Created {summary.created}.{source}", "",
            f"- Searched detector: **{search.winner['measured_ms']:.2f} ms** measured in the search, "
            f"{fp32.median_ms:.2f} ms median in the final bench (budget {budget.latency_ms:g} ms): "
            f"**{fp32.speedup_vs_baseline:.2f}x** the speed of the {bench.baseline} detector "
            f"({fp32_e2e.speedup_vs_baseline:.2f}x end to end with NMS).",
            f"- Backbone entropy score {search.best['score']:.1f} against {base.score:.1f} for {base.name} "
            f"(higher is better), with {human(search.best['params'])} parameters against {human(base.params)}.",
            f"- INT8 ({summary.calibration.method} calibration, {summary.calibration.placement} Q/DQ placement"
            f"{_mac_share(summary.calibration)}): {int8.median_ms:.2f} ms median, "
            f"{fp32.median_ms / int8.median_ms:.2f}x the speed of FP32."]


def _mac_share(calib: CalibrationResult) -> str:
    return "" if calib.int8_mac_share is None else f", {100 * calib.int8_mac_share:.1f}% of conv MACs in INT8"


def _backbone(summary: PipelineSummary) -> list[str]:
    search, base, budget = summary.search, summary.baseline, summary.budget
    best = search.best
    lines = _table(["backbone", "entropy score", "params", "FLOPs (MACs)", "conv layers"],
                   [["searched", f"{best['score']:.2f}", human(best["params"]), human(best["flops"]), best["layers"]],
                    [base.name, f"{base.score:.2f}", human(base.params), human(base.flops), base.layers]])
    lines += ["", "Latency in the search (the whole detector without NMS, quietest of several timing rounds):", ""]
    lines += _table(["seed", "winner predicted", "winner measured", "budget"],
                    [[f"{search.seed_ms:.2f} ms", f"{search.winner['predicted_ms']:.2f} ms",
                      f"{search.winner['measured_ms']:.2f} ms", f"{budget.latency_ms:g} ms"]])
    lines += ["", "Blocks (`search/best_structure.json`):", ""]
    lines += _table(["#", "class", "in", "out", "s", "k", "L", "btn"],
                    [[i, b["class"], b["in"], b["out"], b["s"], b["k"], b.get("L", "-"), b.get("btn", "-")]
                     for i, b in enumerate(best["blocks"])])
    seconds = search.time_s
    return lines + ["", f"Search: {search.candidates:,} candidates in {summary.search_seconds:.1f} s: latency "
                        f"profile {_fmt(seconds['profile'], '.1f')} s, scoring {_fmt(seconds['scoring'], '.1f')} s, "
                        f"predicting {_fmt(seconds['predicting'], '.1f')} s, measuring "
                        f"{_fmt(seconds['measuring'], '.1f')} s in all ({search.measured} new measurements, "
                        f"{search.cached} from the cache).", ""]


def _latency(bench: BenchSummary) -> list[str]:
    lines = ["## Latency", "",
             f"One bench run, the same input and settings for every model ({bench.seconds:g} s each, taking turns "
             f"in {bench.rounds} rounds). *network*: up to the NMS inputs, what the budget covers; *end to end*: "
             "with the in-graph NMS, whose time depends on how many boxes pass its score threshold (with random "
             "weights, most do).", ""]
    lines += _table(["model", "part", "median ms", "p90 ms", "p99 ms", "images/s", "CV", f"vs {bench.baseline}"],
                    [[line.model, line.part, f"{line.median_ms:.2f}", f"{line.p90_ms:.2f}", f"{line.p99_ms:.2f}",
                      f"{line.images_per_s:.1f}", f"{100 * line.cv:.1f}%", f"{line.speedup_vs_baseline:.2f}x"]
                     for line in bench.lines])
    return lines + [line for warning in _warnings(bench) for line in ("", f"> warning: {warning}")]


def _warnings(bench: BenchSummary) -> list[str]:
    """The run's warnings; per-row instability and speed changes folded into one line each."""
    folded = {"unstable": f"coefficient of variation above {100 * CV_THRESHOLD:g}%",
              "speed changed": "round medians more than 10% apart (the machine's speed changed during the run)"}
    warned = {text: [f"{line.model} {line.part}" for line in bench.lines if any(text in w for w in line.warnings)]
              for text in folded}
    return (bench.warnings + [f"{line.model}, {line.part}: {w}" for line in bench.lines for w in line.warnings
                              if not any(text in w for text in folded)]
            + [f"{folded[text]}: {', '.join(rows)}; compare medians with care" for text, rows in warned.items()
               if rows])


def _calibration(calib: CalibrationResult, images: str) -> list[str]:
    lines = ["", "## INT8 calibration", "",
             f"{calib.method} calibration, {calib.placement} Q/DQ placement, on {calib.calibration_images} images "
             f"from `{images}`; measured on {calib.holdout_images} held-out images.", ""]
    share = "-" if calib.int8_mac_share is None else f"{100 * calib.int8_mac_share:.1f}%"
    lines += _table(["INT8 share of conv MACs", "quantized / float layers", "min cosine before NMS",
                     "min SQNR before NMS", "agreement mAP@0.5", "agreement mAP@0.5:0.95"],
                    [[share, f"{calib.quantized_layers} / {calib.float_layers}", _fmt(calib.raw_min_cosine),
                      f"{_fmt(calib.raw_min_sqnr_db, '.1f')} dB", _fmt(calib.map50), _fmt(calib.map50_95)]])
    return lines + ["", "The search is training-free, so these weights are random: the figures check the INT8 "
                        "numerics, not accuracy. Train the detector, export it with its trained weights, and run "
                        "`maedet-deploy calibrate` on your own images for the accuracy that matters.", ""]


def _fmt(value: Any, spec: str = ".4f") -> str:
    return "n/a" if value is None else format(value, spec)


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
