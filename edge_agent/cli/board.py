"""The board's commands: run, inspect, check-config, doctor, bench, demo, and the hidden selftest and
config-reference. Each command's arguments are in its `add_<command>` function."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import socket
import sys
from pathlib import Path

from edge_agent.cli import BROKER_HELP, DEFAULT_BROKER, EXIT_FAILED, EXIT_OK, broker_address, fail
from edge_agent.config import (
    DEFAULT_CONFIG_PATH,
    LOG_LEVELS,
    RUNTIME_CHOICES,
    TASK_CHOICES,
    AgentConfig,
    ConfigError,
    load_config,
    parse_config,
)
from edge_agent.errors import EdgeAgentError
from edge_agent.evaluation.command import add_evaluate


def register(commands: argparse._SubParsersAction) -> None:
    add_run(commands)
    add_inspect(commands)
    add_check_config(commands)
    add_doctor(commands)
    add_bench(commands)
    add_demo(commands)
    add_evaluate(commands)  # on a board or a workstation alike (edge_agent/evaluation/command.py)
    add_selftest(commands)
    add_config_reference(commands)


# ---------------------------------------------------------------------------- run

def add_run(commands: argparse._SubParsersAction) -> None:
    run = commands.add_parser("run", help="run the agent (from a config file, or one pipeline from options)")
    run.add_argument("--config", type=Path, help=f"TOML config file (default {DEFAULT_CONFIG_PATH})")
    trial = run.add_argument_group("one-line trial (no config file)")
    trial.add_argument("--model", help="a .tflite model")
    trial.add_argument("--source", help="camera index, /dev/videoN, URL, video file, folder, image, GStreamer pipeline or picamera2")
    trial.add_argument("--task", choices=TASK_CHOICES, default="auto")
    trial.add_argument("--labels", help="labels file (one per line); default: the model's own")
    trial.add_argument("--runtime", choices=RUNTIME_CHOICES, default="auto")
    trial.add_argument("--broker", type=broker_address, default=DEFAULT_BROKER, help=BROKER_HELP)
    trial.add_argument("--no-mqtt", action="store_true", help="do not publish over MQTT")
    trial.add_argument("--stdout", action="store_true", help="also print each prediction as a JSON line")
    trial.add_argument("--device-id", help="device id in topics (default: hostname)")
    trial.add_argument("--pipeline", default="main", help="pipeline name in topics (default: main)")
    trial.add_argument("--max-fps", type=float, default=0.0)
    trial.add_argument("--max-frames", type=int, default=0, help="stop after N processed frames")
    trial.add_argument("--threads", type=int, default=0, help="interpreter threads (default: all cores)")
    trial.add_argument("--loop", action=argparse.BooleanOptionalAction, default=None,
                       help="replay a file/folder/image source (default: images loop, files do not)")
    trial.add_argument("--state-dir", help="state directory (default: ~/.local/state/edge-agent)")
    trial.add_argument("--trusted-key", action="append", default=[], metavar="NAME.pub",
                       help="a public key whose signed bundles are accepted, for --model and for pushes (repeatable); "
                            "with one, only signed bundles are accepted")
    run.add_argument("--device-key", metavar="FILE",
                     help="this board's device key (keys generate-device) for encrypted bundles; overrides "
                          "[models] device_key")
    run.add_argument("--log-level", choices=LOG_LEVELS)
    run.set_defaults(handler=run_command)


def run_command(args: argparse.Namespace) -> int:
    config_path = None if args.model or args.source else (args.config or DEFAULT_CONFIG_PATH)
    config = trial_config(args) if config_path is None else load_config(config_path)
    if args.device_key:
        import dataclasses

        config = dataclasses.replace(config, models=dataclasses.replace(
            config.models, device_key=str(Path(args.device_key).absolute())))
    if args.log_level is None:
        logging.getLogger().setLevel(getattr(logging, config.log_level.upper()))
    from edge_agent.service.agent import Agent

    # --log-level wins over the file's log_level, at start and on every reload
    agent = Agent(config, config_path, log_level_override=args.log_level)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: agent.request_stop())
    signal.signal(signal.SIGHUP, lambda *_: agent.request_reload())
    return agent.run()


def trial_config(args: argparse.Namespace) -> AgentConfig:
    """One pipeline from command-line options, validated like a config file."""
    from edge_agent.sources import detect_kind

    if not (args.model and args.source):
        raise ConfigError(["--model and --source go together (or use --config FILE)"], "command line")
    host, port = args.broker
    loop = args.loop if args.loop is not None else detect_kind(args.source) == "image"
    sinks = ([] if args.no_mqtt else ["mqtt"]) + (["stdout"] if args.stdout or args.no_mqtt else [])
    pipeline = {
        "model": args.model,
        "source": {"uri": args.source, "loop": loop},
        "task": args.task,
        "runtime": args.runtime,
        "max_fps": args.max_fps,
        "max_frames": args.max_frames,
        "num_threads": args.threads,
        "sinks": sinks,
    }
    if args.labels:
        pipeline["labels"] = args.labels
    data = {
        "device_id": args.device_id or socket.gethostname(),
        "state_dir": args.state_dir or str(Path.home() / ".local/state/edge-agent"),
        "mqtt": {"host": host, "port": port},
        "pipelines": {args.pipeline: pipeline},
    }
    if args.trusted_key:
        data["trusted_keys"] = args.trusted_key
    return parse_config(data, base_dir=Path.cwd(), source="command line")


# ---------------------------------------------------------------------------- inspect

def add_inspect(commands: argparse._SubParsersAction) -> None:
    inspect = commands.add_parser("inspect", help="show a model's inputs, outputs, operators, labels and task")
    inspect.add_argument("model")
    inspect.add_argument("--runtime", choices=RUNTIME_CHOICES, default="auto")
    inspect.add_argument("--task", choices=TASK_CHOICES, default="auto",
                         help="explain whether this task can decode the model (default: the layout auto would pick)")
    inspect.add_argument("--device-key", metavar="FILE", help="an encrypted bundle: the board's device key, to "
                                                               "decrypt the model in memory and inspect it too")
    inspect.add_argument("--json", action="store_true", help="print one JSON object")
    inspect.set_defaults(handler=inspect_command)


def inspect_command(args: argparse.Namespace) -> int:
    from edge_agent.delivery.bundle import is_bundle_file
    from edge_agent.runtime.report import format_report, inspect_model
    from edge_agent.service.decoding import explain_model

    def explain(loaded):  # which output layout the task would pick, and why
        return explain_model(loaded, args.task)

    if is_bundle_file(args.model):
        report = inspect_bundle(args.model, args.runtime, args.device_key, explain)
    else:
        report = inspect_model(args.model, args.runtime, explain)  # ModelFileError: exit 2, in main
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return EXIT_OK


def inspect_bundle(path: str, runtime: str, device_key_path: str | None, explain=None) -> dict:
    """What a bundle says about itself (signer, encryption, for whom), and its model's report when it
    is not encrypted or the board's device key is given. The signature is not checked here."""
    from edge_agent.delivery.bundle import read_bundle_header, read_bundle_model
    from edge_agent.delivery.device_keys import load_device_private_key
    from edge_agent.runtime.report import inspect_model
    from edge_agent.runtime.tflite_file import model_file_from_bytes

    header = read_bundle_header(path)
    manifest, encryption = header.manifest, header.manifest.encryption
    signer = header.signature.key_id if header.signature else None
    parts = [f"{manifest.name} {manifest.version} ({manifest.task}, format {manifest.format_version})",
             f"signed by key {signer} (check it with `edge-agent bundle verify --trusted-key`)" if signer else "UNSIGNED"]
    if encryption:
        parts.append(f"encrypted for {encryption.describe_recipients()}")
    bundle = {"summary": ", ".join(parts), "name": manifest.name, "version": manifest.version, "signed_by": signer,
              "encrypted": encryption is not None,
              "encrypted_for": [{"name": r.name, "key_id": r.key_id} for r in encryption.recipients] if encryption else None}
    if encryption and not device_key_path:
        bundle["summary"] += " (pass --device-key BOARD.key to inspect the model itself)"
        return {"path": path, "bundle": bundle}
    device_key = load_device_private_key(device_key_path) if device_key_path else None
    model, _ = read_bundle_model(header, device_key=device_key)
    report = inspect_model(path, runtime, explain, model_file_from_bytes(path, model))
    report["bundle"] = bundle
    return report


# ---------------------------------------------------------------------------- check-config

def _warn_unknown_labels(pipeline, model_labels) -> None:
    """Labels named in track, [labels.X] or a zone that the model does not have: a warning, as at start."""
    from edge_agent.interpret.stage import unknown_labels

    labels = [label.strip() for label in model_labels or () if label.strip()]
    for key, label in unknown_labels(pipeline.named_labels(), labels).items():
        print(f"warning: pipelines.{pipeline.name}.{key} names label {label!r}, which the model does not have; "
              f"its labels are: {', '.join(labels)}")


def add_check_config(commands: argparse._SubParsersAction) -> None:
    check = commands.add_parser("check-config", help="validate a config file and the files it names")
    check.add_argument("config", type=Path)
    check.set_defaults(handler=check_config_command)


def check_config_command(args: argparse.Namespace) -> int:
    from edge_agent.delivery.bundle import BundleError
    from edge_agent.delivery.keys import SigningKeyError
    from edge_agent.runtime import ModelFileError
    from edge_agent.service.model_source import open_model
    from edge_agent.sources import redact_url

    config = load_config(args.config)
    problems = []
    for pipeline in config.pipelines:
        try:  # a bundle is verified against trusted_keys here exactly as the agent will do it
            model = open_model(pipeline.model, config.trusted_keys, config.allow_unsigned_models,
                               device_key=config.models.device_key).model_file
        except (ModelFileError, BundleError, SigningKeyError) as err:
            problems.append(f"pipelines.{pipeline.name}.model: {err}")
            continue
        if pipeline.labels and not Path(pipeline.labels).is_file():
            problems.append(f"pipelines.{pipeline.name}.labels: {pipeline.labels} does not exist")
        _warn_unknown_labels(pipeline, model.labels if not pipeline.labels or not Path(pipeline.labels).is_file()
                             else Path(pipeline.labels).read_text(encoding="utf-8", errors="replace").split("\n"))
        print(f"pipeline {pipeline.name}: model {model.name} ({len(model.content):,} bytes), source {redact_url(pipeline.source.uri)}, "
              f"sinks {', '.join(pipeline.sinks)}")
    if problems:
        raise ConfigError(problems, str(args.config))
    print(f"{args.config}: OK ({len(config.pipelines)} pipeline(s), device {config.device_id})")
    return EXIT_OK


# ---------------------------------------------------------------------------- doctor

def add_doctor(commands: argparse._SubParsersAction) -> None:
    doctor = commands.add_parser("doctor", help="check the board, its packages, Coral, cameras, broker and clock; "
                                                "one line per check with the fix")
    doctor.add_argument("--config", type=Path, help=f"the agent's config (default {DEFAULT_CONFIG_PATH} when it exists)")
    doctor.add_argument("--json", action="store_true", help="print one JSON object")
    doctor.add_argument("--root", type=Path, default=Path("/"),
                        help="read /sys, /proc, /dev and /etc under this folder (a mounted image; default /)")
    doctor.add_argument("--user", default="edge-agent", help="the service user whose groups are checked (default edge-agent)")
    doctor.add_argument("--timeout-s", type=float, default=5.0, metavar="S",
                        help="bound on each network step and device probe (default 5)")
    doctor.set_defaults(handler=doctor_command, log_level="warning")


def doctor_command(args: argparse.Namespace) -> int:
    from edge_agent.doctor import exit_status, format_text, make_context, run_checks, to_json

    ctx, checks = make_context(args.root, args.config, args.user, args.timeout_s)  # DoctorError: exit 2, in main
    checks += run_checks(ctx)
    print(json.dumps(to_json(ctx, checks), indent=2) if args.json else format_text(checks))
    return exit_status(checks)


# ---------------------------------------------------------------------------- bench

def add_bench(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser("bench", help="measure interpreter, agent end to end, plain loop, latency, RSS, start-up")
    bench.add_argument("--model", help="a .tflite model (default: models/bench/mobilenet_v2_int8.tflite, else the demo model)")
    bench.add_argument("--source", help="video file, folder or stream (default: a generated 640x480 MJPG video)")
    bench.add_argument("--threads", type=int, default=0, help="interpreter threads (default: all cores)")
    bench.add_argument("--seconds", type=float, default=10.0,
                       help="measuring time of each kind, split into --rounds interleaved rounds (default 10)")
    bench.add_argument("--rounds", type=int, default=5,
                       help="alternating rounds of interpreter, agent and plain loop; the ratio is their median (default 5)")
    bench.add_argument("--runtime", choices=RUNTIME_CHOICES, default="auto")
    bench.add_argument("--broker", type=broker_address, help="HOST:PORT of a broker to use (default: start a private mosquitto)")
    bench.add_argument("--interpret", action="store_true",
                       help="turn tracking, events, counts, zones and Home Assistant discovery on (default: off)")
    bench.add_argument("--http", action="store_true",
                       help="turn the HTTP server on, nobody watching (default: off; see python -m edge_agent.views.benchmark)")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.set_defaults(handler=bench_command)


def bench_command(args: argparse.Namespace) -> int:
    from edge_agent.benchmark import BenchOptions, format_results, run_bench

    broker = f"{args.broker[0]}:{args.broker[1]}" if args.broker else ""
    options = BenchOptions(args.model or "", args.source or "", args.threads, args.seconds, args.runtime, broker,
                           interpret=args.interpret, rounds=args.rounds, http=args.http)
    progress = (lambda text: print(text, file=sys.stderr)) if args.json else print
    try:
        results = run_bench(options, progress)
    except (EdgeAgentError, OSError) as err:  # model, runtime, broker: each says what to fix; all are exit 1 here
        return fail(f"bench: {err}", EXIT_FAILED)
    print(json.dumps(results) if args.json else "\n" + format_results(results))
    return EXIT_OK


# ---------------------------------------------------------------------------- demo

def add_demo(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser("demo", help="run the bundled demo against a local broker and print what arrives")
    demo.add_argument("--seconds", type=float, default=10.0)
    demo.add_argument("--broker", type=broker_address, default=DEFAULT_BROKER, help=BROKER_HELP)
    demo.set_defaults(handler=demo_command)


def demo_command(args: argparse.Namespace) -> int:
    from edge_agent.demo import run_demo

    host, port = args.broker
    return run_demo(host, port, args.seconds)


# ---------------------------------------------------------------------------- hidden

def add_selftest(commands: argparse._SubParsersAction) -> None:
    selftest = commands.add_parser("selftest")  # hidden: the model self-test child of a push (service/selftest.py)
    selftest.set_defaults(handler=selftest_command)


def selftest_command(args: argparse.Namespace) -> int:
    from edge_agent.service.selftest import selftest_main

    return selftest_main(sys.stdin.buffer, sys.stdout)


def add_config_reference(commands: argparse._SubParsersAction) -> None:
    # hidden: prints (--update, --check) the README's configuration reference, rendered from the schema
    from edge_agent.config.reference import add_arguments

    reference = commands.add_parser("config-reference")
    add_arguments(reference)
    reference.set_defaults(handler=config_reference_command)


def config_reference_command(args: argparse.Namespace) -> int:
    from edge_agent.config.reference import run

    return run(args.update, args.check)
