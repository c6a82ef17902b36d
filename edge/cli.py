"""``tandem edge ...``: the device's commands (the ``tandem`` command itself is ``tandem.cli``).

    tandem edge run --config FILE        run the device runtime
    tandem edge check-config FILE        validate a config; names the bad field
    tandem edge calibrate --config FILE  pick the judge's threshold from a labelled stream
    tandem edge replay --config FILE     list failed escalations; requeue them with --all or by id

Each command imports what it needs when it runs, so ``tandem --help`` stays quick on a Jetson.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

logger = logging.getLogger(__name__)


def _edge_run(args: argparse.Namespace) -> int:
    from edge.app import EdgeRuntime
    from edge.config import load_config
    from edge.summary import format_table, summarize

    config = load_config(args.config)
    runtime = EdgeRuntime(config)
    signalled: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        logger.info("signal %d: finishing the current frame, then draining", signum)
        signalled.append(signum)
        runtime.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with runtime:
        frames = runtime.run(max_frames=args.max_frames)
        if not signalled:
            # The source ended (a file): give outstanding escalations their deadline.
            logger.info("source done after %d frames; waiting for outstanding verdicts", frames)
            runtime.wait_resolved(config.escalation.deadline_ms / 1000.0 + 1.0)
        summary = summarize(runtime.store)
    # Leaving the block drained the sends in flight and closed the store; queued
    # escalations stay in the outbox and go out after the next start.
    print(json.dumps(summary.as_dict()) if args.json else format_table(summary))
    return 0


def _edge_check(args: argparse.Namespace) -> int:
    from edge.config import load_config

    load_config(args.file)
    print(f"{args.file}: ok")
    return 0


def _edge_calibrate(args: argparse.Namespace) -> int:
    from edge.config import SourceConfig, load_config
    from edge.detectors import create_detector
    from edge.judge import calibrate

    config = load_config(args.config)
    source = config.cameras[0]
    if args.source is not None:
        kind = "images" if args.source.is_dir() else "video"
        source = SourceConfig(kind=kind, path=args.source, labels_csv=args.labels, source_id="calibration")
    elif args.labels is not None:
        source = source.model_copy(update={"labels_csv": args.labels})
    if source.labels_csv is None:
        print("tandem edge calibrate: the stream needs labels (--labels CSV with columns frame,file,label)")
        return 2
    source = source.model_copy(update={"max_fps": None})
    detector = create_detector(config.detector)
    strong = (
        create_detector(config.detector.model_copy(update={"model_path": args.strong_model}))
        if args.strong_model
        else None
    )
    detector.start()
    if strong is not None:
        strong.start()
    try:
        samples, stats = calibrate.collect(detector, source, config.judge, strong)
    finally:
        detector.close()
        if strong is not None:
            strong.close()
    points = calibrate.sweep(samples)
    chosen = calibrate.choose(points, target_escalation=args.target_escalation, target_accuracy=args.target_accuracy)
    print(f"{len(samples)} labelled frames from {source.path}")
    print(calibrate.format_table(points, chosen, strong is not None))
    print(
        f"chosen: confidence_threshold {chosen.threshold:.4f}: {chosen.escalation_rate:.1%} escalated, "
        f"cascade accuracy {chosen.cascade_accuracy:.2%}"
    )
    print(
        f"stream: brightness {stats.brightness_mean:.1f} +- {stats.brightness_std:.1f}, contrast "
        f"{stats.contrast_mean:.1f} +- {stats.contrast_std:.1f}, sharpness p5 {stats.sharpness_p5:.0f} "
        f"p50 {stats.sharpness_p50:.0f}"
    )
    if args.write:
        calibrate.write_config(args.config, chosen.threshold, stats.ood() if args.ood else None)
        print(f"wrote judge.confidence_threshold{' and judge.ood' if args.ood else ''} to {args.config}")
    return 0


def _edge_replay(args: argparse.Namespace) -> int:
    """List the failed escalations, or move them (all, or the ids given) back into the outbox."""
    import time

    from edge.config import load_config
    from edge.outbox import EdgeStore, OutboxLimits

    config = load_config(args.config)
    o = config.outbox
    store = EdgeStore(config.state_path, o.synchronous, OutboxLimits(o.max_rows, o.max_bytes, o.on_full))
    store.open()
    try:
        failed = store.failed()
        if not args.all and not args.trace_ids:
            for row in failed:
                print(f"{row.trace_id}  attempts {row.attempts}  priority {row.priority}  {row.reason}")
            print(f"{len(failed)} failed escalations; requeue with --all or by trace id")
            return 0
        requeued = store.replay(time.time(), None if args.all else args.trace_ids)
    finally:
        store.close()
    missing = set(args.trace_ids) - set(requeued) if not args.all else set()
    print(f"requeued {len(requeued)} escalations; a running runtime sends them on its next pass")
    if missing:
        print(f"not requeued (unknown, or the outbox is full): {' '.join(sorted(missing))}")
        return 1
    return 0


def _edge_enroll(args: argparse.Namespace) -> int:
    from edge.enroll import EnrolmentFailed, enroll

    try:
        enrolled = enroll(args.hub, args.token, args.dir, ca_path=args.ca)
    except EnrolmentFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    files = enrolled.files
    print(f"enrolled as {enrolled.device_id}; put this in the device's config:")
    print(f"device_id: {enrolled.device_id}\ntls:\n  ca_path: {files.ca_path}\n  cert_path: {files.cert_path}")
    print(f"  key_path: {files.key_path}")
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    """``tandem edge`` and its subcommands, each with its handler."""
    edge = commands.add_parser("edge", help="the device runtime").add_subparsers(dest="edge_command", required=True)
    run = edge.add_parser("run", help="run the device runtime")
    run.add_argument("--config", type=Path, required=True, help="YAML config (see README)")
    run.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    run.add_argument("--json", action="store_true", help="print the end-of-run summary as one JSON line")
    run.set_defaults(handler=_edge_run)
    cal = edge.add_parser("calibrate", help="pick the judge's threshold from a labelled stream")
    cal.add_argument("--config", type=Path, required=True, help="the device config (its detector and judge)")
    cal.add_argument("--source", type=Path, help="a video file or image folder (default: the config's source)")
    cal.add_argument("--labels", type=Path, help="ground truth CSV: frame,file,label")
    goal = cal.add_mutually_exclusive_group(required=True)
    goal.add_argument("--target-escalation", type=float, help="the highest share of frames to escalate, e.g. 0.15")
    goal.add_argument("--target-accuracy", type=float, help="the accuracy to reach at the least escalation")
    cal.add_argument("--strong-model", type=Path, help="the hub's model, to count its real answers on escalations")
    cal.add_argument("--ood", action="store_true", help="also write the stream's statistics as judge.ood")
    cal.add_argument("--write", action="store_true", help="write the chosen values into the config file")
    cal.set_defaults(handler=_edge_calibrate)
    replay = edge.add_parser("replay", help="list failed escalations, or requeue them")
    replay.add_argument("--config", type=Path, required=True, help="the device config (its state_path)")
    replay.add_argument("--all", action="store_true", help="requeue every failed escalation")
    replay.add_argument("trace_ids", nargs="*", help="requeue these")
    replay.set_defaults(handler=_edge_replay)
    enrol = edge.add_parser("enroll", help="make this device's key and have the hub's fleet CA certify it")
    enrol.add_argument("--hub", required=True, help="the hub's URL, e.g. https://hub.example:8000")
    enrol.add_argument("--token", required=True, help="the one-time token an operator made (POST /v1/admin/enrolments)")
    enrol.add_argument("--dir", type=Path, required=True, help="where key.pem, cert.pem and ca.pem go")
    enrol.add_argument("--ca", type=Path, help="the fleet CA's certificate, to check the hub and its answer against")
    enrol.set_defaults(handler=_edge_enroll)
    check = edge.add_parser("check-config", help="validate a config file")
    check.add_argument("file", type=Path)
    check.set_defaults(handler=_edge_check)
