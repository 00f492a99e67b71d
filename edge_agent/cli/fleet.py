"""`edge-agent fleet list`, and the group lookup `push --group` and `models list --group` share.

Both find the boards through edge_agent.host.fleet: a signed discover request that every board
answers live (any MQTT 3.1.1 broker), merged with the retained state (mosquitto delivers it at
once). Exit status of `fleet list`: 0 when devices were found, 1 when none were (or the group is
empty), when one device id is used by several boards, or the broker cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass

from edge_agent.cli import EXIT_FAILED, EXIT_OK, fail
from edge_agent.errors import EdgeAgentError


NOT_SENT = "not sent"  # the result of a member no request went to (an id several boards answer as)


class EmptyGroup(EdgeAgentError):
    """No device names the group: nothing to do (exit 1)."""

    exit_status = EXIT_FAILED


def register(commands: argparse._SubParsersAction) -> None:
    from edge_agent.cli.delivery import _add_broker_options

    fleet = commands.add_parser("fleet", help="the boards on the broker: who answers, their groups and models")
    actions = fleet.add_subparsers(dest="fleet_command", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="every board (or a group's) with its groups, pipelines, models and version",
                                 description="Ask every board on the broker who it is (a signed discovery request "
                                             "any MQTT broker carries) and read their retained state.")
    listing.add_argument("--group", default="", metavar="NAME", help="only the boards of this group")
    add_discover_option(listing)
    listing.add_argument("--json", action="store_true", help="print one JSON object")
    _add_broker_options(listing)
    listing.set_defaults(handler=_fleet_list_command)


def discover_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 <= value <= 600:
        raise argparse.ArgumentTypeError(f"expected 0 to 600 seconds, got {text}")
    return value


def add_discover_option(parser: argparse.ArgumentParser) -> None:
    from edge_agent.delivery.fleet_protocol import DEFAULT_DISCOVER_S

    parser.add_argument("--discover-s", type=discover_seconds, default=DEFAULT_DISCOVER_S, metavar="S",
                        help=f"how long to listen for the boards' discovery answers (default {DEFAULT_DISCOVER_S:g}, "
                             "above the default state interval of 5 s; 0 = retained state only, which mosquitto "
                             "delivers at once and RabbitMQ does not)")


@dataclass(frozen=True)
class GroupTargets:
    devices: list[str]  # the members a request goes to
    skipped: list  # PushResult for members it does not go to (offline, duplicate ids)


def group_targets(args: argparse.Namespace, broker, key) -> GroupTargets:
    """The members of args.group; EmptyGroup when there are none."""
    from edge_agent.host.fleet import discover_fleet
    from edge_agent.host.push_results import NO_ANSWER, PushResult

    fleet = discover_fleet(broker, args.prefix, args.group, args.discover_s, key)
    everyone = fleet.in_group(args.group)
    if not everyone:
        raise EmptyGroup(_nobody(args, broker, f"announces group {args.group!r}"))
    duplicates = set(fleet.duplicates)
    skipped = []
    for device in everyone:
        info = fleet.devices[device]
        if device in duplicates:
            skipped.append(PushResult(device, NOT_SENT, f"{len(info.instances)} boards answer as device {device}: "
                                                        "give each board its own device_id, then try again"))
        elif info.offline:
            skipped.append(PushResult(device, NO_ANSWER, "offline (its retained status says so)"))
    answered = sum("answer" in fleet.devices[d].sources for d in everyone)
    print(f"group {args.group}: {len(everyone)} device(s), {answered} answered discovery within {args.discover_s:g} s, "
          f"{len(everyone) - answered} known from retained state only"
          + (f"; {fleet.malformed} malformed answer(s) ignored" if fleet.malformed else ""), file=sys.stderr)
    return GroupTargets(fleet.members(args.group), skipped)


def _nobody(args: argparse.Namespace, broker, what: str) -> str:
    return (f"no device {what} on {broker.label} (prefix {args.prefix!r}): none answered discovery within "
            f"{args.discover_s:g} s and no retained state names it. Check the boards' `groups` setting, that they "
            "run and are connected to this broker, and --key (a board with trusted_keys ignores an unsigned "
            "discovery); `edge-agent fleet list` shows every board that answers")


def _fleet_list_command(args: argparse.Namespace) -> int:
    from edge_agent.cli.delivery import _broker, _signing_key
    from edge_agent.host.fleet import discover_fleet

    broker = _broker(args)
    try:
        fleet = discover_fleet(broker, args.prefix, args.group, args.discover_s, _signing_key(args))
    except ConnectionError as err:
        return fail(str(err), EXIT_FAILED)
    devices = fleet.in_group(args.group)
    if args.json:
        print(json.dumps({"group": args.group, "discover_s": args.discover_s, "malformed_answers": fleet.malformed,
                          "duplicates": fleet.duplicates,
                          "devices": [fleet.devices[d].to_dict() for d in devices]}, indent=2))
    elif devices:
        print(_fleet_table(fleet, devices))
    if not devices:
        return fail(_nobody(args, broker, f"announces group {args.group!r}" if args.group else "is there"),
                    EXIT_FAILED)
    if fleet.malformed:
        print(f"{fleet.malformed} malformed discovery answer(s) ignored", file=sys.stderr)
    if fleet.duplicates:
        return fail(f"device id(s) used by more than one board: {', '.join(fleet.duplicates)}; give each board its "
                    "own device_id (push and rollback leave these out)", EXIT_FAILED)
    return EXIT_OK


def _fleet_table(fleet, devices: list[str]) -> str:
    rows = [("device", "status", "groups", "version", "pipeline", "model", "sha256", "seen in")]
    for device in devices:
        info = fleet.devices[device]
        described = info.to_dict()
        status = "DUPLICATE ID" if described["duplicate"] else described["status"]
        pipelines = info.pipelines or [{}]
        for n, pipeline in enumerate(pipelines):
            model = pipeline.get("model") or {}
            lead = (device, status, ",".join(info.groups) or "-", info.agent_version or "-",
                    ) if n == 0 else ("", "", "", "")
            rows.append(lead + (str(pipeline.get("name") or "-"),
                                " ".join(str(model.get(k) or "") for k in ("name", "version")).strip() or "-",
                                str(model.get("sha256") or "-")[:16],
                                "+".join(sorted(info.sources)) if n == 0 else ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    lines.append(f"{len(devices)} device(s)" + (f", {len(fleet.duplicates)} id(s) used by several boards"
                                                if fleet.duplicates else ""))
    return "\n".join(lines)
