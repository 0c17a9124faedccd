"""`build`, `bench` and `compare`: engines, trtexec-style latency reports, backend agreement."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..backends import BACKENDS, build_model, open_runner, parse_batches, parse_shapes
from ..bench import REPORT_FORMATS, BenchResult, eager_detector, run_bench, write_report
from ..compare import DEFAULT_ATOL, DEFAULT_RTOL, CompareResult, compare_runners, image_feeds, random_feeds
from ..inputs import spec_from_mapping
from ..errors import MaedetError
from ..ranges import check_range
from .common import console, print_json

TrustEngineOption = Annotated[bool, typer.Option(
    help="tensorrt: load an engine whose .json record (written by build, with the engine's sha256) is missing or "
         "does not match it. Engines are code: trust only files you built.")]
ShapeOption = Annotated[Optional[list[str]], typer.Option(
    "--shape", help="Input shape NAME:1x3x640x640 for dynamic dims; repeat (or comma-separate) for several inputs.")]
BackendText = f"Backend: {' or '.join(BACKENDS)}."


def build(
    model: Annotated[Path, typer.Argument(help="ONNX model.")],
    out: Annotated[Path, typer.Option(help="Output: an optimized .onnx (onnxruntime) or an engine (tensorrt); "
                                           "how it was built goes to OUT.json beside it.")],
    backend: Annotated[str, typer.Option(help=BackendText)] = "onnxruntime",
    fp16: Annotated[bool, typer.Option(help="tensorrt: FP16 (TensorRT 8.x: builder flag; >= 10: the graph "
                                            "must hold FP16).")] = False,
    int8: Annotated[bool, typer.Option(help="tensorrt: INT8 from a Q/DQ graph.")] = False,
    min_shapes: Annotated[Optional[list[str]], typer.Option(help="tensorrt profile: NAME:1x3x320x320.")] = None,
    opt_shapes: Annotated[Optional[list[str]], typer.Option(help="tensorrt profile: NAME:1x3x640x640.")] = None,
    max_shapes: Annotated[Optional[list[str]], typer.Option(help="tensorrt profile: NAME:8x3x640x640.")] = None,
    workspace_mb: Annotated[Optional[int], typer.Option(help="tensorrt: workspace memory pool limit (MiB).")] = None,
    timing_cache: Annotated[Optional[Path], typer.Option(help="tensorrt: timing cache file, read and "
                                                              "updated; makes rebuilds fast.")] = None,
    opt_level: Annotated[Optional[int], typer.Option(help="tensorrt: builder optimization level 0-5 "
                                                          "(TensorRT >= 8.6).")] = None,
    graph_optimization: Annotated[str, typer.Option(help="onnxruntime: 'all' (fastest, this CPU only) or "
                                                         "'extended' (portable).")] = "all",
    as_json: Annotated[bool, typer.Option("--json", help="Print the build record as JSON.")] = False,
) -> None:
    """Build a deployable model: an offline-optimized ONNX for ONNX Runtime, or a TensorRT engine.

    The record OUT.json holds the output's sha256 and is written last; a TensorRT engine is
    loaded later only while it matches (engines are code).

    Example:

      maedet-deploy build det.onnx --backend tensorrt --fp16 --opt-shapes images:1x3x640x640 --out det.engine
    """
    if backend == "tensorrt":
        options = dict(fp16=fp16, int8=int8, min_shapes=parse_shapes(min_shapes), opt_shapes=parse_shapes(opt_shapes),
                       max_shapes=parse_shapes(max_shapes), workspace_mb=workspace_mb,
                       timing_cache=str(timing_cache) if timing_cache else None, opt_level=opt_level)
    else:
        given = [name for name, value in (("--fp16", fp16), ("--int8", int8), ("--min-shapes", min_shapes),
                                          ("--opt-shapes", opt_shapes), ("--max-shapes", max_shapes),
                                          ("--workspace-mb", workspace_mb), ("--timing-cache", timing_cache),
                                          ("--opt-level", opt_level)) if value]
        if given:
            raise MaedetError(f"{', '.join(given)} only apply to --backend tensorrt")
        options = dict(graph_optimization=graph_optimization)
    record = build_model(model, out, backend, **options)
    if as_json:
        print_json(record)
        return
    table = Table(title=f"built {out}", show_header=False)
    for key, value in record.items():
        table.add_row(key, str(value))
    console.print(table)


def bench(
    model: Annotated[Path, typer.Argument(help="ONNX model, or a TensorRT engine with --backend tensorrt.")],
    backend: Annotated[str, typer.Option(help=BackendText)] = "onnxruntime",
    shape: ShapeOption = None,
    batch: Annotated[Optional[str], typer.Option(help="Batch sizes to sweep, e.g. 1,2,4,8 (sets a dynamic "
                                                      "leading dim).")] = None,
    warmup_ms: Annotated[float, typer.Option(help="Warm-up time before timing.")] = 500.0,
    iterations: Annotated[Optional[int], typer.Option(help="Timed iterations (instead of --duration).")] = None,
    duration: Annotated[Optional[float], typer.Option(help="Seconds of timed iterations (default 3; at least "
                                                           "10 iterations).")] = None,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads (onnxruntime, torch); default: one per "
                                                        "usable physical core.")] = None,
    torch_baseline: Annotated[Optional[str], typer.Option(help="Also time our PyTorch detector of this "
                                                               "structure (zoo name or file) in eager mode.")] = None,
    num_classes: Annotated[int, typer.Option(help="Classes of the --torch-baseline detector.")] = 80,
    seed: Annotated[int, typer.Option(help="Seed of the random inputs.")] = 0,
    rounds: Annotated[int, typer.Option(help="Split the run into rounds in which the runners take turns: a machine "
                                             "whose speed drifts slows them alike, and the median's interval spans "
                                             "the rounds.")] = 3,
    report: Annotated[Optional[Path], typer.Option(help="Also write a report: .md, .csv or .json.")] = None,
    trust_engine: TrustEngineOption = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Latency and throughput, trtexec style: settings, then min/mean/median/p90/p95/p99/max.

    Example:

      maedet-deploy bench det.onnx --shape x:1x3x640x640 --batch 1,2,4 --duration 3 --report det.md
    """
    if iterations is None and duration is None:
        duration = 3.0
    for setting, value, low, high in (("warmup_ms", warmup_ms, 0, 3.6e6), ("iterations", iterations, 1, None),
                                      ("duration", duration, 1e-3, 86_400), ("threads", threads, 1, 4096),
                                      ("rounds", rounds, 1, 10_000), ("num_classes", num_classes, 1, 65_536)):
        check_range(value, setting, low, high)
    if report is not None and report.suffix.lower() not in REPORT_FORMATS:
        raise MaedetError(f"must end in {', '.join(REPORT_FORMATS)}, got {report}", "report")
    shapes, batches = parse_shapes(shape), parse_batches(batch)
    with ExitStack() as stack:
        runners = {backend: stack.enter_context(open_runner(model, backend, threads, shapes, batches, trust_engine))}
        if torch_baseline:
            runners["torch eager"] = stack.enter_context(
                eager_detector(torch_baseline, runners[backend].inputs, num_classes, threads))
        result = run_bench(runners, str(model), shapes, batches, seed, rounds, warmup=warmup_ms / 1000,
                           iterations=iterations, duration=duration)
    if report:
        write_report(result, report)
    if as_json:
        print_json(result.to_dict())
    else:
        _print_bench(result)


def _print_bench(result: BenchResult) -> None:
    data = result.to_dict()
    settings = Table(title=f"bench {result.model}", show_header=False)
    settings.add_row("device", f"{result.fingerprint['cpu']} ({result.fingerprint['usable_cores']} usable cores)"
                     + (f", {result.fingerprint['gpu']}" if result.fingerprint.get("gpu") else ""))
    settings.add_row("fingerprint", data["fingerprint_id"])
    for label, runner_settings in result.runners.items():
        settings.add_row(label, ", ".join(f"{k}={v}" for k, v in runner_settings.items()))
    settings.add_row("measure", ", ".join(f"{k}={v}" for k, v in result.settings.items() if v not in (None, [], {})))
    console.print(settings)
    table = Table(title="latency (ms)")
    for column in ("runner", "batch", "iters", "min", "mean", "median", "p90", "p95", "p99", "max", "CV",
                   "FPS", "img/s"):
        table.add_column(column, justify="left" if column == "runner" else "right")
    for row in result.rows:
        s = row.stats
        table.add_row(row.runner, str(row.batch), str(s.iterations),
                      *(f"{v:.2f}" for v in (s.min_ms, s.mean_ms, s.median_ms, s.p90_ms, s.p95_ms, s.p99_ms,
                                             s.max_ms)),
                      f"{100 * s.cv:.1f}%", f"{s.throughput_fps:.1f}", f"{s.images_per_s:.1f}")
    console.print(table)
    for speedup in data["speedups"]:
        console.print(f"batch {speedup['batch']}: {speedup['runner']} is [bold]{speedup['speedup']:.2f}x[/] "
                      f"as fast as {speedup['baseline']}")
    for note in result.warnings + [f"{r.runner} batch {r.batch}: {w}" for r in result.rows for w in r.stats.warnings]:
        console.print(f"[yellow]warning:[/] {note}", highlight=False)


def compare(
    model_a: Annotated[Path, typer.Argument(help="First model (the reference).")],
    model_b: Annotated[Optional[Path], typer.Argument(help="Second model; default: the first one again "
                                                           "(on --backend-b).")] = None,
    backend_a: Annotated[str, typer.Option(help=BackendText)] = "onnxruntime",
    backend_b: Annotated[str, typer.Option(help=BackendText)] = "onnxruntime",
    shape: ShapeOption = None,
    images: Annotated[Optional[Path], typer.Option(help="Folder of images (searched recursively) to use instead of "
                                                        "random inputs.")] = None,
    letterbox: Annotated[bool, typer.Option(help="Images: keep aspect ratio, pad with 114 (else stretch).")] = False,
    bgr: Annotated[bool, typer.Option(help="Images: BGR channel order (else RGB).")] = False,
    scale: Annotated[float, typer.Option(help="Images: pixel scale before mean/std.")] = 1 / 255,
    mean: Annotated[str, typer.Option(help="Images: per-channel mean, after scaling.")] = "0",
    std: Annotated[str, typer.Option(help="Images: per-channel std, after scaling.")] = "1",
    samples: Annotated[int, typer.Option(help="Random input samples (without --images).")] = 1,
    seed: Annotated[int, typer.Option(help="Seed of the random inputs.")] = 0,
    atol: Annotated[float, typer.Option(help="Absolute tolerance.")] = DEFAULT_ATOL,
    rtol: Annotated[float, typer.Option(help="Relative tolerance (of the first model's values).")] = DEFAULT_RTOL,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for onnxruntime.")] = None,
    trust_engine: TrustEngineOption = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Run the same inputs through two backends or two models and compare every output.

    Per output: max/mean abs error, max rel error, the worst sample's cosine similarity, pass/fail (|a - b| <= atol + rtol * |a|). Exit 1 when it fails.

    Example: maedet-deploy compare det.onnx --backend-b tensorrt --shape x:1x3x640x640 --atol 1e-3
    """
    if model_b is None and backend_a == backend_b:
        raise MaedetError("nothing to compare: give a second model or a different --backend-b")
    shapes = parse_shapes(shape)
    spec = spec_from_mapping({"resize": "letterbox" if letterbox else None, "color": "bgr" if bgr else None,
                              "scale": scale, "mean": mean, "std": std}, origin="options")
    with open_runner(model_a, backend_a, threads, shapes, trust_engine=trust_engine) as runner_a, \
            open_runner(model_b or model_a, backend_b, threads, shapes, trust_engine=trust_engine) as runner_b:
        if images:
            first = runner_a.inputs[0].name if runner_a.inputs else None
            feeds = image_feeds(runner_a.inputs, images, spec, shapes.get(first))
        else:
            feeds = random_feeds(runner_a.inputs, shapes, samples, seed)
        result = compare_runners(runner_a, runner_b, feeds, atol, rtol,
                                 ({"model": str(model_a), "backend": backend_a},
                                  {"model": str(model_b or model_a), "backend": backend_b}))
    if as_json:
        print_json(result.to_dict())
    else:
        _print_compare(result)
    if not result.passed:
        raise typer.Exit(1)


def _print_compare(result: CompareResult) -> None:
    table = Table(title=f"{result.a['model']} ({result.a['backend']}) vs {result.b['model']} ({result.b['backend']}), "
                        f"{result.samples} sample(s), atol {result.atol:g}, rtol {result.rtol:g}")
    for column in ("output", "shape", "max abs", "mean abs", "max rel", "cosine (worst)", "mismatches", "result"):
        table.add_column(column, justify="left" if column in ("output", "result") else "right")
    for o in result.outputs:
        shape = "x".join(map(str, o.shape_a)) if o.shape_a == o.shape_b else \
            f"{'x'.join(map(str, o.shape_a))} vs {'x'.join(map(str, o.shape_b))}"
        verdict = "[green]pass[/]" if o.passed else f"[red]FAIL[/] {o.message}"
        table.add_row(o.name, shape, f"{o.max_abs:.3g}", f"{o.mean_abs:.3g}", f"{o.max_rel:.3g}",
                      "-" if o.worst_cosine is None else f"{o.worst_cosine:.6f}",
                      f"{o.mismatches}/{o.elements}", verdict)
    console.print(table)
    console.print("[bold green]PASSED[/]" if result.passed else "[bold red]FAILED[/]")
