"""Stage ① QA command line: ``dreamlite parity run|verify|diff|bisect|vectors`` and ``dreamlite device-sim``.

* ``run`` — the reference trace of a canonical request on an executor (bundle + onnx/qnn, or a folder).
* ``verify`` — one device trace or a folder of them against references → a table, an HTML report per
  trace, exit 0 only when every verdict is at least as good as ``--expect``.
* ``diff`` — two traces, stage by stage.
* ``bisect`` — the first divergent stage of a device trace, replayed from the device's own inputs.
* ``vectors`` — a DLN-1 port's vector file against the golden vectors.
* ``device-sim`` — runs a bundle as a phone app would (onnxruntime only, no torch, the qnn EP) and
  writes a device trace.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from model_runtime.errors import InvalidInputError

VERDICT_RANK = {"bit_exact": 0, "within_tolerance": 1, "mismatch": 2}


def _add_executor_options(parser: argparse.ArgumentParser) -> None:
    from model_runtime.cli import add_model_options

    add_model_options(parser)


def _read_request(path: str) -> Any:
    from model_runtime.parity.canonical import load_request

    try:
        return load_request(Path(path).read_bytes())
    except OSError as err:
        raise InvalidInputError("--request", f"cannot be read ({err.strerror}).", given=path) from err


def _read_image(path: str | None) -> Any:
    if path is None:
        return None
    from model_runtime.preprocess import decode_image

    return decode_image(Path(path), field="--image")


def register(sub: Any) -> None:
    """Add ``parity`` (with its sub-commands) and ``device-sim``."""
    parity = sub.add_parser("parity", help="phone ↔ server parity tools for QA")
    psub = parity.add_subparsers(dest="parity_command", required=True, metavar="ACTION")

    req = psub.add_parser("request", help="write a canonical request (its request_id is printed)")
    req.add_argument("--task", default="generate", choices=["generate", "edit"])
    req.add_argument("--prompt", required=True)
    req.add_argument("--seed", type=int, default=42)
    req.add_argument("--size", default=None, help="working WIDTHxHEIGHT (default: the bundle's first size)")
    req.add_argument("--image", help="edit source (its RGB8 sha256 goes into the request)")
    req.add_argument("--steps", type=int, default=None, help="default: the model's steps")
    req.add_argument("--noise", default="dln1", choices=["dln1", "torch-cpu"])
    req.add_argument("--bundle", metavar="DIR", help="pin the request to this bundle's id (and its sizes)")
    req.add_argument("--target", default=None, help="QNN target the trace is for, e.g. sm8650")
    req.add_argument("--out", required=True, metavar="REQ.json")
    req.set_defaults(handler=cmd_request)

    run = psub.add_parser("run", help="reference trace of a canonical request")
    run.add_argument("--request", required=True, metavar="REQ.json")
    run.add_argument("--image", help="edit source (must match the request's hash)")
    run.add_argument(
        "--out", required=True, metavar="TRACE.json", help="trace JSON (+ .npz tensors beside it)"
    )
    run.add_argument("--executor", default="reference", help="name recorded in the trace")
    run.add_argument("--no-tensors", action="store_true")
    _add_executor_options(run)
    run.set_defaults(handler=cmd_run)

    verify = psub.add_parser("verify", help="device trace(s) against references → table, HTML, exit code")
    # dest "trace", not "device": the executor options' --device (cpu/cuda) shares the namespace.
    verify.add_argument("trace", metavar="TRACE.json|DIR", help="a device trace or a folder of them")
    verify.add_argument("--reference", metavar="TRACE.json", help="a reference trace (else computed here)")
    verify.add_argument("--image", help="edit source, when references are computed here")
    verify.add_argument("--report-dir", metavar="DIR", help="write one HTML report per trace here")
    verify.add_argument("--expect", default="within_tolerance", choices=list(VERDICT_RANK))
    verify.add_argument("--tolerances", metavar="JSON", help="tolerances (default: the bundle's manifest)")
    verify.add_argument("--replay", action="store_true", help="replay the first divergent stage")
    verify.add_argument("--json", dest="json_out", metavar="OUT.json", help="write all reports as JSON")
    _add_executor_options(verify)
    verify.set_defaults(handler=cmd_verify)

    diff = psub.add_parser("diff", help="compare two traces stage by stage")
    diff.add_argument("a", metavar="A.json")
    diff.add_argument("b", metavar="B.json")
    diff.set_defaults(handler=cmd_diff)

    bisect = psub.add_parser("bisect", help="find and replay the first divergent stage of a device trace")
    bisect.add_argument("trace", metavar="TRACE.json", help="device trace with its .npz tensors")
    bisect.add_argument("--reference", metavar="TRACE.json")
    bisect.add_argument("--image")
    bisect.add_argument("--stage", help="replay this stage instead of the first divergent one")
    _add_executor_options(bisect)
    bisect.set_defaults(handler=cmd_bisect)

    cal = psub.add_parser(
        "calibrate", help="measure a bundle's parity tolerances (benign pairs, negative controls)"
    )
    cal.add_argument("--bundle", required=True, metavar="DIR")
    cal.add_argument("--target", default="sm8650")
    cal.add_argument("--size", default=None, help="WIDTHxHEIGHT (default: the bundle's first size)")
    cal.add_argument("--steps", type=int, default=None, help="default: the model's steps")
    cal.add_argument("--count", type=int, default=4, help="requests (generate and edit alternating)")
    cal.add_argument(
        "--write", action="store_true", help="store the tolerances in the manifest (new bundle id)"
    )
    cal.set_defaults(handler=cmd_calibrate)

    vectors = psub.add_parser("vectors", help="check a DLN-1 port's vector file against the golden vectors")
    vectors.add_argument("--file", required=True, metavar="PORT.json")
    vectors.set_defaults(handler=cmd_vectors)

    sim = sub.add_parser("device-sim", help="run a bundle as a phone app would and write a device trace")
    sim.add_argument("--bundle", required=True, metavar="DIR")
    sim.add_argument("--target", default="sm8650")
    sim.add_argument(
        "--precision",
        default="w8a16",
        help="which of the bundle's QNN contexts: w8a16 (default) or fp16 (exported with --qnn-precision)",
    )
    sim.add_argument("--request", required=True, metavar="REQ.json")
    sim.add_argument("--image", help="edit source")
    sim.add_argument("--out", required=True, metavar="TRACE.json")
    sim.add_argument("--allow-cpu-fallback", action="store_true", help="use the CPU EP if QNN is unavailable")
    sim.set_defaults(handler=cmd_device_sim)


def _pipeline(args: argparse.Namespace) -> Any:
    from model_runtime.cli import load_pipeline_from_args

    return load_pipeline_from_args(args)


def _tolerances(args: argparse.Namespace, pipeline: Any | None) -> Any:
    from model_runtime.parity.compare import Tolerances

    if getattr(args, "tolerances", None):
        return Tolerances.model_validate_json(Path(args.tolerances).read_text())
    declared = None if pipeline is None else pipeline.backend.info.details.get("parity_tolerances")
    return Tolerances.model_validate(declared) if declared else Tolerances()


def cmd_request(args: argparse.Namespace) -> int:
    """``parity request``."""
    from model_runtime.cli import parse_size
    from model_runtime.parity.canonical import CanonicalRequest

    bundle_id = None
    size = parse_size(args.size) if args.size else None
    steps = args.steps
    if args.bundle:
        from model_runtime.bundle import open_bundle

        opened = open_bundle(Path(args.bundle))
        bundle_id = opened.bundle_id
        size = size or (opened.manifest.schedules[0].width, opened.manifest.schedules[0].height)
        steps = steps or opened.manifest.pipeline.default_steps
    if size is None:
        raise InvalidInputError(
            "--size", "is required without --bundle.", allowed="e.g. 1024x1024", given=None
        )
    image = _read_image(args.image)
    if args.task == "edit" and image is None:
        raise InvalidInputError("--image", "is required for an edit request.", given=None)
    out_size = (image.shape[1], image.shape[0]) if image is not None else size
    request = CanonicalRequest.create(
        task=args.task,
        prompt=args.prompt,
        seed=args.seed,
        width=out_size[0],
        height=out_size[1],
        steps=steps or 4,
        noise=args.noise,
        image=image,
        working_size=size,
        bundle_id=bundle_id,
        target=args.target,
    )
    Path(args.out).write_bytes(request.canonical_json())
    print(json.dumps({"request_id": request.request_id, "out": args.out}))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """``parity run``."""
    from model_runtime.parity.runner import run_request
    from model_runtime.parity.trace import save_trace

    request = _read_request(args.request)
    pipeline = _pipeline(args)
    trace, tensors = run_request(pipeline, request, image=_read_image(args.image), executor=args.executor)
    written = save_trace(Path(args.out), trace, None if args.no_tensors else tensors)
    print(
        json.dumps(
            {"request_id": trace.request_id, "stages": len(trace.stages), "files": [str(p) for p in written]}
        )
    )
    return 0


def _table(report: Any) -> str:
    lines = [f"{'stage':<20} {'verdict':<17} {'max|Δ|':>10} {'%range':>8} {'PSNR':>7}"]
    for s in report.stages:
        lines.append(
            f"{s.name:<20} {s.verdict:<17} {_num(s.max_abs):>10} {_num(s.pct_of_range):>8} "
            f"{_num(s.psnr_db):>7}" + (" (est.)" if s.estimated else "")
        )
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def cmd_verify(args: argparse.Namespace) -> int:
    """``parity verify``."""
    from model_runtime.parity.compare import compare_traces
    from model_runtime.parity.replay import replay_report
    from model_runtime.parity.report_html import render_report
    from model_runtime.parity.runner import run_request
    from model_runtime.parity.trace import load_trace

    source = Path(args.trace)
    paths = sorted(p for p in source.glob("*.json")) if source.is_dir() else [source]
    if not paths:
        raise InvalidInputError("trace", "holds no trace files.", given=str(source))
    pipeline = None
    ref_fixed = load_trace(Path(args.reference)) if args.reference else None
    reports = []
    worst = 0
    for path in paths:
        device, dev_tensors = load_trace(path)
        if ref_fixed is not None:
            reference, ref_tensors = ref_fixed
        else:
            pipeline = pipeline or _pipeline(args)
            reference, ref_tensors = run_request(pipeline, device.request, image=_read_image(args.image))
        report = compare_traces(
            reference,
            device,
            reference_tensors=ref_tensors,
            device_tensors=dev_tensors,
            tolerances=_tolerances(args, pipeline),
        )
        if args.replay and report.first_divergent_stage and dev_tensors is not None:
            pipeline = pipeline or _pipeline(args)
            try:
                report.replay = replay_report(
                    pipeline, device.request, report.first_divergent_stage, dev_tensors
                )
            except InvalidInputError as err:
                report.replay = {
                    "stage": report.first_divergent_stage,
                    "outcome": "not_replayable",
                    "explanation": str(err),
                }
        reports.append(report)
        worst = max(worst, VERDICT_RANK[report.verdict])
        print(f"== {path.name}: {report.verdict} (first divergent: {report.first_divergent_stage})")
        print(_table(report))
        for d in report.environment_diff:
            print(f"   env differs: {d['field']}: reference={d['reference']!r} device={d['device']!r}")
        if report.replay:
            print(f"   replay: {report.replay.get('explanation')}")
        if args.report_dir:
            out_dir = Path(args.report_dir)
            out_dir.mkdir(parents=True, exist_ok=True)
            ref_img = ref_tensors.get("image") if ref_tensors else None
            dev_img = dev_tensors.get("image") if dev_tensors else None
            (out_dir / f"{path.stem}.html").write_text(render_report(report, ref_img, dev_img))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps([r.model_dump(mode="json") for r in reports], indent=1))
    ok = worst <= VERDICT_RANK[args.expect]
    worst_name = next(k for k, v in VERDICT_RANK.items() if v == worst)
    status = "PASS" if ok else "FAIL"
    print(f"summary: {len(reports)} trace(s), worst verdict {worst_name}, expected {args.expect}: {status}")
    return 0 if ok else 1


def cmd_diff(args: argparse.Namespace) -> int:
    """``parity diff``."""
    from model_runtime.parity.compare import compare_traces
    from model_runtime.parity.trace import load_trace

    a, ta = load_trace(Path(args.a))
    b, tb = load_trace(Path(args.b))
    report = compare_traces(a, b, reference_tensors=ta, device_tensors=tb)
    print(f"verdict: {report.verdict}; first divergent stage: {report.first_divergent_stage}")
    print(_table(report))
    for d in report.environment_diff:
        print(f"differs: {d['field']}: {d['reference']!r} vs {d['device']!r}")
    return 0 if report.verdict == "bit_exact" else 1


def cmd_bisect(args: argparse.Namespace) -> int:
    """``parity bisect``."""
    from model_runtime.parity.compare import compare_traces
    from model_runtime.parity.replay import replay_report
    from model_runtime.parity.runner import run_request
    from model_runtime.parity.trace import load_trace

    device, dev_tensors = load_trace(Path(args.trace))
    if dev_tensors is None:
        raise InvalidInputError("trace", "needs its .npz tensors beside it for a replay.", given=args.trace)
    pipeline = _pipeline(args)
    if args.reference:
        reference, ref_tensors = load_trace(Path(args.reference))
    else:
        reference, ref_tensors = run_request(pipeline, device.request, image=_read_image(args.image))
    report = compare_traces(reference, device, reference_tensors=ref_tensors, device_tensors=dev_tensors)
    stage = args.stage or report.first_divergent_stage
    if stage is None:
        print("every stage is bit-exact: nothing to bisect")
        return 0
    outcome = replay_report(pipeline, device.request, stage, dev_tensors, _tolerances(args, pipeline))
    print(json.dumps({"first_divergent_stage": report.first_divergent_stage, **outcome}, indent=1))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    """``parity calibrate``."""
    from model_runtime.bundle import open_bundle
    from model_runtime.cli import parse_size
    from model_runtime.parity.calibrate import calibrate, write_tolerances

    bundle = Path(args.bundle)
    manifest = open_bundle(bundle).manifest
    if args.size:
        size = parse_size(args.size)
    else:
        first = manifest.schedules[0]
        size = (first.width, first.height)
    steps = args.steps or manifest.pipeline.default_steps
    record = calibrate(bundle, target=args.target, size=size, steps=steps, count=args.count)
    if args.write:
        record["bundle_id"] = write_tolerances(bundle, record)
    print(json.dumps(record, indent=1))
    return 0


def cmd_vectors(args: argparse.Namespace) -> int:
    """``parity vectors``."""
    from model_runtime.noise_dln1 import verify_vectors

    try:
        candidate = json.loads(Path(args.file).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InvalidInputError("--file", f"is not a readable JSON file ({err}).", given=args.file) from err
    problems = verify_vectors(candidate)
    for problem in problems:
        print(problem)
    print("DLN-1 vectors: " + ("PASS (bit-exact)" if not problems else f"FAIL ({len(problems)} mismatches)"))
    return 0 if not problems else 1


def cmd_device_sim(args: argparse.Namespace) -> int:
    """``device-sim``: the phone stand-in (onnxruntime and numpy only; fails if torch got imported)."""
    from model_runtime.parity.runner import run_request
    from model_runtime.parity.trace import save_trace
    from model_runtime.pipeline import load_pipeline

    request = _read_request(args.request)
    if request.noise != "dln1":
        raise InvalidInputError(
            "noise", "must be dln1 on a device (torch-cpu noise needs torch).", given=request.noise
        )
    options: dict[str, Any] = {"target": args.target, "precision": args.precision}
    if args.allow_cpu_fallback:
        options["allow_cpu_fallback"] = True
    pipeline = load_pipeline(Path(args.bundle), backend="qnn", **options)
    trace, tensors = run_request(pipeline, request, image=_read_image(args.image), executor="device-sim")
    if "torch" in sys.modules:
        raise RuntimeError("device-sim imported torch; a phone app has no torch")
    written = save_trace(Path(args.out), trace, tensors)
    print(
        json.dumps(
            {
                "request_id": trace.request_id,
                "files": [str(p) for p in written],
                "provider": trace.executor["provider"],
            }
        )
    )
    return 0
