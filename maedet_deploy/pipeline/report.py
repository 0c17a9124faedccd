"""The pipeline's report: one markdown page (and the same content as HTML) a user
can show a colleague, built only from the stages' JSON summaries."""

from __future__ import annotations

import html
from typing import Any, Sequence

from ..bench.measure import CV_THRESHOLD
from ..format import human


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def render_markdown(summary: dict[str, Any]) -> str:
    search, best, base = summary["search"], summary["search"]["best"], summary["baseline"]
    latency, calib, bench = search["latency"], summary["calibration"], summary["bench"]
    rows = {(row["model"], row["part"]): row for row in bench["rows"]}
    fp32, int8 = rows[("searched FP32", "network")], rows[("searched INT8", "network")]
    fp32_e2e = rows[("searched FP32", "end to end")]
    lines = [f"# maedet-deploy report: `{summary['out']}`", "",
             f"Latency budget **{summary['latency_ms']:g} ms** for the {latency['scope']} at "
             f"{summary['image_size']}x{summary['image_size']}, batch {summary['batch']}, on "
             f"{latency['target']} ({summary['fingerprint'].get('gpu') or summary['fingerprint'].get('cpu')}). "
             f"Created {summary['created']}." + (
                 f" The budget is the {base['name']} detector's measured {summary['baseline_ms']:.2f} ms divided by "
                 f"{summary['speedup']:g}." if summary["speedup"] else ""), "",
             f"- Searched detector: **{latency['measured_ms']:.2f} ms** measured in the search, "
             f"{fp32['median_ms']:.2f} ms median in the final bench (budget {summary['latency_ms']:g} ms): "
             f"**{fp32['speedup_vs_baseline']:.2f}x** the speed of the {bench['baseline']} detector "
             f"({fp32_e2e['speedup_vs_baseline']:.2f}x end to end with NMS).",
             f"- Backbone entropy score {best['score']:.1f} against {base['score']:.1f} for {base['name']} "
             f"(higher is better), with {human(best['params'])} parameters against {human(base['params'])}.",
             f"- INT8 ({calib['method']} calibration, {calib['placement']} Q/DQ placement): "
             f"{int8['median_ms']:.2f} ms median, {fp32['median_ms'] / int8['median_ms']:.2f}x the speed of FP32.",
             "",
             "## Chosen backbone", ""]
    lines += _table(["backbone", "entropy score", "params", "FLOPs (MACs)", "conv layers"],
                    [[name, f"{net['score']:.2f}", human(net["params"]), human(net["flops"]), net["layers"]]
                     for name, net in (("searched", best), (base["name"], base))])
    lines += ["", "Latency in the search (the whole detector without NMS, quietest of several timing rounds):", ""]
    lines += _table(["seed", "winner predicted", "winner measured", "budget"],
                    [[f"{latency['seed_ms']:.2f} ms", f"{latency['predicted_ms']:.2f} ms",
                      f"{latency['measured_ms']:.2f} ms", f"{summary['latency_ms']:g} ms"]])
    lines += ["", "Blocks (`search/best_structure.json`):", ""]
    lines += _table(["#", "class", "in", "out", "s", "k", "L", "btn"],
                    [[i, b["class"], b["in"], b["out"], b["s"], b["k"], b.get("L", "-"), b.get("btn", "-")]
                     for i, b in enumerate(best["blocks"])])
    seconds = search["time_s"]
    lines += ["", f"Search: {search['candidates']:,} candidates in {search['seconds']:.1f} s: latency profile "
                  f"{_fmt(seconds['profile'], '.1f')} s, scoring {_fmt(seconds['scoring'], '.1f')} s, predicting "
                  f"{_fmt(seconds['predicting'], '.1f')} s, measuring {_fmt(seconds['measuring'], '.1f')} s in all "
                  f"({latency['measurements']} new measurements, {latency['cached']} from the cache).", ""]
    lines += ["## Score vs measured latency (final population)", "", f"![Pareto front]({summary['pareto_png']})", ""]
    lines += ["## Latency", "",
              f"One bench run, the same input and settings for every model ({bench['seconds']:g} s each, taking "
              f"turns in {bench['rounds']} rounds). "
              "*network*: up to the NMS inputs, what the budget covers; *end to end*: with the in-graph NMS, whose "
              "time depends on how many boxes pass its score threshold (with random weights, most do).", ""]
    lines += _table(["model", "part", "median ms", "p90 ms", "p99 ms", "images/s", "CV", f"vs {bench['baseline']}"],
                    [[row["model"], row["part"], f"{row['median_ms']:.2f}", f"{row['p90_ms']:.2f}",
                      f"{row['p99_ms']:.2f}", f"{row['images_per_s']:.1f}", f"{100 * row['cv']:.1f}%", f"{row['speedup_vs_baseline']:.2f}x"]
                     for row in bench["rows"]])
    def rows_warned(text: str) -> list[str]:
        return [f"{row['model']} {row['part']}" for row in bench["rows"]
                if any(text in warning for warning in row.get("warnings", []))]

    folded = {"unstable": f"coefficient of variation above {100 * CV_THRESHOLD:g}%",
              "speed changed": "round medians more than 10% apart (the machine's speed changed during the run)"}
    warnings = bench["warnings"] + [f"{row['model']}, {row['part']}: {warning}" for row in bench["rows"]
                                    for warning in row.get("warnings", [])
                                    if not any(text in warning for text in folded)]
    warnings += [f"{summary_text}: {', '.join(rows_warned(text))}; compare medians with care"
                 for text, summary_text in folded.items() if rows_warned(text)]
    lines += [line for warning in warnings for line in ("", f"> warning: {warning}")]
    lines += ["", "## INT8 calibration", "",
              f"{calib['method']} calibration, {calib['placement']} Q/DQ placement, on {calib['calibration_images']} "
              f"images from `{calib['images']}`; measured on {calib['holdout_images']} held-out images.", ""]
    lines += _table(["quantized / float layers", "min cosine before NMS", "min SQNR before NMS",
                     "agreement mAP@0.5", "agreement mAP@0.5:0.95"],
                    [[f"{calib['quantized_layers']} / {calib['float_layers']}", _fmt(calib["raw_min_cosine"]),
                      f"{_fmt(calib['raw_min_sqnr_db'], '.1f')} dB", _fmt(calib["map50"]), _fmt(calib["map"])]])
    lines += ["", "The search is training-free, so these weights are random: the figures check the INT8 numerics, "
                  "not accuracy. Train the detector, export it with `--checkpoint`, and run `maedet-deploy calibrate` "
                  "on your own images for the accuracy that matters.", ""]
    lines += ["## Device", ""]
    lines += _table(["field", "value"], [[k, v] for k, v in summary["fingerprint"].items()
                                         if v is not None and not isinstance(v, (dict, list))])
    lines += ["", "## Stages", ""]
    lines += _table(["stage", "seconds", "this run"], [[name, f"{stage['seconds']:.1f}",
                                                       "reused" if stage["reused"] else "ran"]
                                                      for name, stage in summary["stages"].items()])
    lines += ["", "## Reproduce", "", "```bash", *summary["commands"], "```", ""]
    return "\n".join(lines)


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
