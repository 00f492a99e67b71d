"""The model delivery commands: `edge-agent push` and `edge-agent models {rollback,list}`.

`push`, `models rollback` and `models list --device/--group` talk to boards over MQTT from the
workstation (a group's members found by discovery: cli/fleet.py), signing every request with `--key NAME.key` (a board with trusted_keys refuses
unsigned ones); `models list --config/--state-dir` reads a board's model store locally. Exit status: 0 when every device did what was asked,
1 when one did not (rejected, rolled back, no answer) or the broker cannot be reached,
2 for bad arguments or a bundle that is not whole. Each command's arguments are in its
`add_<command>` function.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edge_agent.cli import BROKER_HELP, DEFAULT_BROKER, EXIT_FAILED, EXIT_OK, broker_address, fail
from edge_agent.cli.fleet import add_discover_option, group_targets
from edge_agent.config import DEFAULT_CONFIG_PATH
from edge_agent.errors import InputError


def register(commands: argparse._SubParsersAction) -> None:
    add_push(commands)
    add_models(commands)


def _add_broker_options(parser: argparse.ArgumentParser, signing: bool = True) -> None:
    if signing:
        parser.add_argument("--key", type=Path, metavar="NAME.key",
                            help="sign every request with this private key (its .pub must be in the boards' "
                                 "trusted_keys; boards with trusted_keys refuse unsigned requests)")
    group = parser.add_argument_group("broker")
    group.add_argument("--broker", type=broker_address, default=DEFAULT_BROKER, help=BROKER_HELP)
    group.add_argument("--prefix", default="edge", help="the agents' mqtt.topic_prefix (default edge)")
    group.add_argument("--username", default="", help="MQTT user name")
    group.add_argument("--password-file", type=Path, help="a file holding the MQTT password")
    group.add_argument("--tls", action="store_true", help="connect with TLS, checking the broker against the system's CAs")
    group.add_argument("--ca", type=Path, metavar="CA.pem", help="connect with TLS, checking the broker against this CA")
    group.add_argument("--cert", type=Path, metavar="CERT.pem", help="TLS client certificate (with --tls-key)")
    group.add_argument("--tls-key", type=Path, metavar="KEY.pem", help="the TLS client certificate's private key")


def _broker(args: argparse.Namespace):
    from edge_agent.config import TlsConfig
    from edge_agent.host.broker import BrokerAddress

    password = None
    if args.password_file:
        try:
            password = args.password_file.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as err:
            raise InputError(f"--password-file {args.password_file} cannot be read: {err.strerror}") from None
    if bool(args.cert) != bool(args.tls_key):
        raise InputError("--cert and --tls-key go together (a TLS client certificate and its key; "
                         "--key is the request-signing key)")
    for option, path in (("--ca", args.ca), ("--cert", args.cert), ("--tls-key", args.tls_key)):
        if path is not None and not path.is_file():
            raise InputError(f"{option} {path} does not exist")
    tls = None
    if args.tls or args.ca or args.cert:
        tls = TlsConfig(ca_file=str(args.ca or ""), cert_file=str(args.cert or ""), key_file=str(args.tls_key or ""))
    host, port = args.broker
    return BrokerAddress(host, port, args.username, password, tls)


def _signing_key(args: argparse.Namespace):
    from edge_agent.delivery.keys import load_private_key

    return load_private_key(args.key) if getattr(args, "key", None) else None  # SigningKeyError: exit 2, in main


# ---------------------------------------------------------------------------- push

def add_push(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("push", help="send a model bundle to boards over MQTT, verified and hot-swapped there",
                                 description="Send a bundle to one board, several, or a group over the MQTT broker the "
                                             "boards use; each verifies, self-tests and hot-swaps it, or says why not.")
    parser.add_argument("bundle", type=Path, metavar="BUNDLE", help="a .eab bundle (edge-agent bundle create)")
    targets = parser.add_mutually_exclusive_group(required=True)
    targets.add_argument("--device", action="append", metavar="ID", help="a device id (repeat for several)")
    targets.add_argument("--group", metavar="NAME", help="every device of this group (found by discovery and the "
                                                         "retained state; see --discover-s)")
    parser.add_argument("--pipeline", default="", help="the pipeline to update (needed on boards with several)")
    parser.add_argument("--chunk-kb", type=int, default=64, metavar="KB",
                        help="chunk size in KiB (default 64; lower it for brokers with a small message limit)")
    parser.add_argument("--timeout", type=float, default=300.0, metavar="S",
                        help="how long a board may take to answer in full (default 300)")
    parser.add_argument("--answer-timeout", type=float, default=10.0, metavar="S",
                        help="how long each board has to answer the push's first request before it is reported "
                             "`no answer` (default 10; raise it for hundreds of boards on a busy broker)")
    parser.add_argument("--watch", type=float, default=0.0, metavar="S",
                        help="keep listening S seconds after activation, to catch an automatic rollback (default 0)")
    parser.add_argument("--allow-downgrade", action="store_true",
                        help="let the boards install it even if its version is older than the one they run")
    parser.add_argument("--unicast", action="store_true",
                        help="with --group: send each board its own copy, not one broadcast for the group (boards "
                             "older than the group push protocol)")
    parser.add_argument("--json", action="store_true", help="print a JSON list, one object per device")
    add_discover_option(parser)
    _add_broker_options(parser)
    parser.set_defaults(handler=_push_command)


def _push_command(args: argparse.Namespace) -> int:
    from edge_agent.host.progress import ProgressBoard
    from edge_agent.host.push import Pusher, PushOptions
    from edge_agent.host.push_results import PushResult, format_results
    from edge_agent.delivery.bundle import read_bundle
    from edge_agent.delivery.update_protocol import MAX_CHUNK_SIZE, MIN_CHUNK_SIZE

    chunk_size = args.chunk_kb * 1024
    if not args.answer_timeout > 0:
        return fail(f"--answer-timeout: expected seconds above 0, got {args.answer_timeout:g}")
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        return fail(f"--chunk-kb: expected 1 to {MAX_CHUNK_SIZE // 1024}, got {args.chunk_kb}")
    broker = _broker(args)
    key = _signing_key(args)
    bundle = read_bundle(args.bundle)  # never send a damaged file: the boards would only refuse it (exit 2, in main)
    try:
        content = args.bundle.read_bytes()
    except OSError as err:
        return fail(str(err))
    skipped: list[PushResult] = []  # members not pushed to: offline, or an id several boards answer as
    try:
        if args.group:
            targets = group_targets(args, broker, key)  # EmptyGroup: exit 1, in main
            devices, skipped = targets.devices, targets.skipped
        else:
            devices = list(dict.fromkeys(args.device))
        manifest = bundle.manifest
        signed = f"signed with key {key.key_id}" if key else "UNSIGNED requests (only boards without trusted_keys take them)"
        encrypted = f", encrypted for {manifest.encryption.describe_recipients()}" if manifest.encryption else ""
        how = f"once for group {args.group}" if args.group and not args.unicast else "to each"
        print(f"pushing {manifest.name} {manifest.version} ({len(content):,} bytes, "
              f"{-(-len(content) // chunk_size)} chunk(s) of {args.chunk_kb} KiB{encrypted}) to {len(devices)} device(s) "
              f"({how}) via {broker.label}, {signed}", file=sys.stderr)
        options = PushOptions(broker, args.prefix, args.pipeline, chunk_size, timeout_s=args.timeout, watch_s=args.watch,
                              answer_timeout_s=args.answer_timeout, key=key, allow_downgrade=args.allow_downgrade,
                              group=args.group if args.group and not args.unicast else "")
        results = Pusher(content, devices, options, ProgressBoard(devices), args.bundle.name).run() if devices else []
    except ConnectionError as err:
        return fail(str(err), EXIT_FAILED)
    results += skipped
    results.sort(key=lambda r: r.device)
    print(json.dumps([r.to_dict() for r in results]) if args.json else format_results(results))
    return EXIT_OK if results and all(r.ok for r in results) else EXIT_FAILED


# ---------------------------------------------------------------------------- models

def add_models(commands: argparse._SubParsersAction) -> None:
    models = commands.add_parser("models", help="the models pushed to a board: list them, roll back")
    actions = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)

    rollback = actions.add_parser("rollback", help="ask a board (over MQTT) to go back to its previous model")
    rollback.add_argument("--device", action="append", required=True, metavar="ID", help="a device id (repeat for several)")
    rollback.add_argument("--pipeline", default="", help="the pipeline (needed on boards with several)")
    rollback.add_argument("--timeout", type=float, default=60.0, metavar="S", help="how long to wait (default 60)")
    rollback.add_argument("--json", action="store_true", help="print a JSON list, one object per device")
    _add_broker_options(rollback)
    rollback.set_defaults(handler=_rollback_command)

    listing = actions.add_parser("list", help="the models in a board's store, newest first (here, or over MQTT)")
    where = listing.add_mutually_exclusive_group()
    where.add_argument("--config", type=Path, help=f"the agent's config, for its state_dir (default {DEFAULT_CONFIG_PATH})")
    where.add_argument("--state-dir", type=Path, help="the agent's state directory")
    where.add_argument("--device", action="append", metavar="ID", help="ask this board over MQTT (repeat for several)")
    where.add_argument("--group", metavar="NAME", help="ask every board of this group over MQTT (found by discovery)")
    listing.add_argument("--timeout", type=float, default=30.0, metavar="S",
                         help="with --device or --group: how long to wait for the listings")
    listing.add_argument("--json", action="store_true", help="print one JSON object")
    add_discover_option(listing)
    _add_broker_options(listing)
    listing.set_defaults(handler=_list_command)


def _rollback_command(args: argparse.Namespace) -> int:
    from edge_agent.host.push_results import ROLLED_BACK, format_results
    from edge_agent.host.rollback import request_rollback

    try:
        results = request_rollback(list(dict.fromkeys(args.device)), _broker(args), args.prefix, args.pipeline,
                                   args.timeout, _signing_key(args))
    except ConnectionError as err:
        return fail(str(err), EXIT_FAILED)
    print(json.dumps([r.to_dict() for r in results]) if args.json else format_results(results, success=ROLLED_BACK))
    return EXIT_OK if all(r.result == ROLLED_BACK for r in results) else EXIT_FAILED


def _list_command(args: argparse.Namespace) -> int:
    from edge_agent.config import load_config
    from edge_agent.delivery.store import describe_stores

    if args.device or args.group:
        return _list_remote(args)
    state_dir = args.state_dir or Path(load_config(args.config or DEFAULT_CONFIG_PATH).state_dir)
    pipelines = describe_stores(state_dir)  # StoreError: exit 1, in main
    if args.json:
        print(json.dumps({"state_dir": str(state_dir), "pipelines": pipelines}, indent=2))
        return EXIT_OK
    if not pipelines:
        print(f"no pushed models under {state_dir}/models: every pipeline runs the model its config names")
        return EXIT_OK
    print(_listing_table(pipelines))
    return EXIT_OK


def _listing_table(pipelines: dict[str, list[dict]], device: str = "") -> str:
    """One row per stored model: active, -1, -2 … (what a rollback goes back to, in order), retired."""
    lead = ("device",) if device else ()
    rows = [lead + ("pipeline", "", "name", "version", "sha256", "activated", "origin")]
    for name, models in pipelines.items():
        previous = 0
        for model in models:
            role = model.get("role", "")
            previous += role == "previous"
            shown = {"active": "active", "previous": f"-{previous}"}.get(role, role)
            rows.append(((device,) if device else ()) + (
                name, shown, str(model.get("name", "")), str(model.get("version") or "-"),
                str(model.get("sha256", ""))[:16], str(model.get("activated_at", "")), str(model.get("origin", ""))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows)


def _list_remote(args: argparse.Namespace) -> int:
    from edge_agent.host.push_results import format_results
    from edge_agent.host.rollback import request_listing

    broker, key = _broker(args), _signing_key(args)
    try:
        if args.group:
            targets = group_targets(args, broker, key)  # EmptyGroup: exit 1, in main
            devices, skipped = targets.devices, targets.skipped
        else:
            devices, skipped = list(dict.fromkeys(args.device)), []
        answers = request_listing(devices, broker, args.prefix, args.timeout, key) if devices else {}
    except ConnectionError as err:
        return fail(str(err), EXIT_FAILED)
    answers.update({r.device: r for r in skipped})
    answers = dict(sorted(answers.items()))
    listed = {d: a for d, a in answers.items() if isinstance(a, dict)}
    failed = [a for a in answers.values() if not isinstance(a, dict)]
    if args.json:
        print(json.dumps({"devices": {d: {"pipelines": a} if isinstance(a, dict) else a.to_dict()
                                      for d, a in answers.items()}}, indent=2))
    else:
        for device, pipelines in listed.items():
            print(_listing_table(pipelines, device) if pipelines else
                  f"{device}: no pushed models: every pipeline runs the model its config names")
        if failed:
            print(format_results(failed, success="listed"))
    return EXIT_OK if not failed else EXIT_FAILED
