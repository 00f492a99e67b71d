"""A fleet load harness: many board-side update endpoints against one mosquitto, driven by the real
`edge-agent push --group`.

    .venv/bin/python tests/fleet_load.py --boards 10,100,1000

What is real, per board endpoint: the agent's MqttPublisher (its own paho client, client id
`edge-agent-<device>`), ModelUpdates (inbox, worker thread, transfers, events), the RequestGate
(signed group begin, clock window, replays, begin rate), FleetAnswers (signed discovery), the
ModelInstaller's install flow (bundle signature and model hash checked within models.max_mb, the
version rule, the fit check, the model store in the board's own temporary state_dir, active.json
written), the config parsed by the real parser. The pusher is `python -m edge_agent push --group`
as a user runs it, signing with a key; the broker a real mosquitto on a free port.

What is stood in (so a process can hold hundreds of boards on 2 cores): no camera, no pipeline
thread, no interpreter. `selftest_in_child` (a child process per board that loads the runtime and
invokes the model) is replaced by a report made from the verified bundle's manifest and model hash;
`build_active_model` (load, allocate, warm up) by a StandInModel holding only the ModelRef and task;
and the agent by StandInAgent, whose install_model records the install instead of swapping a running
pipeline. Probation is off (probation_s = 0): a stand-in pipeline never fails, so judging it would
prove nothing. The boards publish no periodic state, so discovery is the request/response kind only.

One step (N boards) runs in a fresh mosquitto (sys_interval 1, so `$SYS/broker/bytes/*` meters the
traffic) with N endpoints spread over worker processes of at most --per-process endpoints; it waits
until the broker counts every board's subscriptions, then runs the push and prints one line of
numbers (and --json-out writes them all). Numbers, not assertions: tests/test_fleet_load.py runs a
small step and checks that every board activated.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from edge_agent.records import ModelRef  # noqa: E402

GROUP = "load"
SUBSCRIPTIONS_PER_BOARD = 5  # models push/#, rollback, list; fleet/discover; the group's push topics
SYS_BYTES_RECEIVED = "$SYS/broker/bytes/received"
SYS_BYTES_SENT = "$SYS/broker/bytes/sent"
SYS_SUBSCRIPTIONS = "$SYS/broker/subscriptions/count"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------ the stand-ins (board side)

@dataclass
class StandInModel:
    """What the installer and the fleet answers read of an ActiveModel: its ref and task."""

    ref: ModelRef
    task: str


class StandInPipeline:
    """A pipeline that is always running and healthy (what model_updates and fleet_answers read)."""

    def __init__(self, config, active: StandInModel):
        self.config = config
        self.active = active
        self.status = "running"
        self.error = ""

    @property
    def heartbeat_mono(self) -> float:
        return time.monotonic()


class StandInAgent:
    """The PipelineHost ModelUpdates needs: the real config, stand-in pipelines, installs recorded."""

    def __init__(self, config, running: StandInModel):
        self.config = config
        self._pipelines = {p.name: StandInPipeline(p, running) for p in config.pipelines}
        self.installed: list[ModelRef] = []

    @property
    def pipelines(self):
        return dict(self._pipelines)

    def install_model(self, name: str, active: StandInModel, restart: bool = False) -> None:
        self._pipelines[name].active = active
        self.installed.append(active.ref)


def stand_in_selftest(config, pipeline: str, opened, label: str, timeout_s: float, stop) -> dict:
    """In place of service.selftest.selftest_in_child: the report the child would give, from the
    bundle the installer has already verified (signature, model hash), without running the model."""
    manifest = opened.manifest
    running = next(p for p in config.pipelines if p.name == pipeline)
    return {"ok": True, "name": manifest.name, "version": manifest.version, "sha256": opened.model_file.sha256,
            "task": manifest.task or RUNNING_TASK, "seconds": 0.0, "pipeline": running.name}


def stand_in_build(config, opened=None, label: str = "", **_) -> StandInModel:
    """In place of service.active_model.build_active_model (no interpreter)."""
    return StandInModel(ModelRef(opened.manifest.name, opened.model_file.sha256, opened.manifest.version),
                        opened.manifest.task or RUNNING_TASK)


RUNNING_TASK = "classification"  # what the demo model the boards start with publishes


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def process_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def watch_timing(updates, publisher, seen: dict[str, float]) -> None:
    """Note (wall clock) when the group begin reached the board's inbox and when the board published each
    event kind the first time: where the time goes. Wraps, does not change, what the real code does."""
    receive, publish = updates._receive, publisher.publish

    def timed_receive(topic: str, payload: bytes) -> None:
        if topic.endswith("/begin"):
            seen.setdefault("begin", time.time())
        receive(topic, payload)

    def timed_publish(topic: str, payload, *args, **kwargs):
        if topic.endswith("/models/events"):
            seen.setdefault(json.loads(payload)["event"], time.time())
        return publish(topic, payload, *args, **kwargs)

    updates._receive, publisher.publish = timed_receive, timed_publish


def board_config(folder: Path, device: str, broker: str, trusted_key: Path, model: Path, video: Path):
    from edge_agent.config.parser import parse_config

    host, port = broker.rsplit(":", 1)
    return parse_config({
        "device_id": device, "state_dir": str(folder / device), "trusted_keys": [str(trusted_key)], "groups": [GROUP],
        "mqtt": {"host": host, "port": int(port)},
        "spool": {"enabled": False},
        "models": {"probation_s": 0},
        "pipelines": {"cam": {"model": str(model), "source": {"uri": str(video)}}},
    }, folder, f"board {device}")


def run_worker(args: argparse.Namespace) -> int:
    """One process of `args.count` endpoints: prints `ready` once all are connected, then on the line
    `report` on stdin what they installed; stops when stdin closes."""
    logging.basicConfig(level=logging.WARNING, format=f"worker {args.first}: %(levelname)s %(name)s: %(message)s")
    import edge_agent.service.model_install as model_install
    from edge_agent.mqtt.publisher import MqttPublisher
    from edge_agent.runtime.tflite_file import read_model_file
    from edge_agent.service.model_updates import ModelUpdates

    model_install.selftest_in_child = stand_in_selftest  # the two stand-ins the docstring names
    model_install.build_active_model = stand_in_build
    base_kb = rss_kb()
    model = read_model_file(args.model)
    running = StandInModel(ModelRef(model.name, model.sha256, ""), RUNNING_TASK)
    folder = Path(args.folder)
    boards = []
    timings: dict[str, dict[str, float]] = {}
    for n in range(args.first, args.first + args.count):
        device = f"board{n:05d}"
        config = board_config(folder, device, args.broker, Path(args.trusted_key), Path(args.model), Path(args.video))
        agent = StandInAgent(config, running)
        publisher = MqttPublisher(config.mqtt, device, clean_session=True)
        updates = ModelUpdates(agent, publisher, 0.0)
        watch_timing(updates, publisher, timings.setdefault(device, {}))
        updates.start()  # subscribes before connecting, as the agent does
        publisher.start()
        boards.append((device, agent, publisher, updates))
    deadline = time.monotonic() + 120
    for _, _, publisher, _ in boards:
        publisher.connected.wait(max(0.0, deadline - time.monotonic()))
    connected = sum(p.connected.is_set() for _, _, p, _ in boards)
    print(json.dumps({"ready": True, "connected": connected, "rss_base_kb": base_kb, "rss_kb": rss_kb(),
                      "threads": threading.active_count(), "cpu_s": process_cpu_s()}), flush=True)
    for line in sys.stdin:
        if line.strip() == "report":
            report = {"installed": {}, "active_on_disk": 0, "rss_kb": rss_kb(), "threads": threading.active_count(),
                      "dropped_chunks": 0, "dropped_requests": 0, "cpu_s": process_cpu_s(), "timings": timings}
            for device, agent, _, updates in boards:
                if agent.installed:
                    report["installed"][device] = agent.installed[-1].sha256
                if (folder / device / "models" / "cam" / "active.json").exists():
                    report["active_on_disk"] += 1
                for name, value in updates.counters().items():
                    report[name] += value
            print(json.dumps(report), flush=True)
    for _, _, publisher, updates in boards:
        updates.stop()
        publisher.stop(1.0)
    return 0


# ------------------------------------------------------------------ the driver

class Meter:
    """The broker's $SYS counters, as a real subscriber receives them."""

    def __init__(self, broker):
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.latest: dict[str, tuple[int, int]] = {}  # topic -> (value, samples seen)
        self._lock = threading.Lock()
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="fleet-load-meter")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 0) for t in
                                                                    (SYS_BYTES_RECEIVED, SYS_BYTES_SENT, SYS_SUBSCRIPTIONS)])
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def _on_message(self, client, userdata, message) -> None:
        with self._lock:
            _, seen = self.latest.get(message.topic, (0, 0))
            self.latest[message.topic] = (int(message.payload), seen + 1)

    def value(self, topic: str) -> tuple[int, int]:
        with self._lock:
            return self.latest.get(topic, (0, 0))

    def fresh(self, topic: str, settle_s: float = 2.5) -> int:
        """The counter as it stands after this call: mosquitto publishes a $SYS value each interval (1 s)
        only when it changed, so the latest sample after more than two intervals is the current value."""
        time.sleep(settle_s)
        value, seen = self.value(topic)
        if not seen:
            raise RuntimeError(f"the broker published no {topic} (sys_interval 1 is in its config)")
        return value

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def cpu_s(pid: int) -> float:
    """utime + stime of a process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def raise_open_files_limit() -> int:
    """Every board is a socket in the broker and in its worker: the soft limit up to the hard one
    (children inherit it). The limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def run_step(boards: int, folder: Path, per_process: int, discover_s: float, chunk_kb: int, bundle: Path,
             keys: Path, timeout_s: float, answer_timeout_s: float = 10.0) -> dict:
    from support import DEMO_MODEL, DEMO_VIDEO, Broker, free_port

    folder.mkdir(parents=True)
    broker = Broker(folder, port=free_port(), extra_config=("sys_interval 1", "max_connections -1",
                                                            "max_queued_messages 10000"))
    broker.start()
    meter = Meter(broker)
    workers: list[subprocess.Popen] = []
    result: dict = {"boards": boards, "bundle_bytes": bundle.stat().st_size, "chunk_kb": chunk_kb,
                    "discover_s": discover_s, "processes": 0, "failures": []}
    try:
        for first in range(0, boards, per_process):
            count = min(per_process, boards - first)
            stderr = open(folder / f"worker-{first}.stderr", "wb")
            workers.append(subprocess.Popen(
                [sys.executable, __file__, "--worker", "--broker", broker.address, "--first", str(first),
                 "--count", str(count), "--folder", str(folder / "boards"), "--trusted-key", str(keys / "dev.pub"),
                 "--model", str(DEMO_MODEL), "--video", str(DEMO_VIDEO)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True, bufsize=1))
        result["processes"] = len(workers)
        started_s = time.monotonic()
        ready = [json.loads(w.stdout.readline() or "{}") for w in workers]
        if not all(r.get("ready") for r in ready):
            raise RuntimeError(f"a worker did not start: see {folder}/worker-*.stderr")
        result["connected"] = sum(r["connected"] for r in ready)
        expected = boards * SUBSCRIPTIONS_PER_BOARD + 3  # and the meter's
        deadline = time.monotonic() + 120
        while meter.value(SYS_SUBSCRIPTIONS)[0] < expected and time.monotonic() < deadline:
            time.sleep(0.2)
        result["subscriptions"] = meter.value(SYS_SUBSCRIPTIONS)[0]
        result["start_s"] = round(time.monotonic() - started_s, 1)
        meter.fresh(SYS_BYTES_SENT)
        received0, sent0 = meter.value(SYS_BYTES_RECEIVED)[0], meter.value(SYS_BYTES_SENT)[0]
        broker_cpu0 = cpu_s(broker.process.pid)
        push_started, push_started_wall = time.monotonic(), time.time()
        push = subprocess.Popen([sys.executable, "-m", "edge_agent", "push", str(bundle), "--group", GROUP,
                                 "--key", str(keys / "dev.key"), "--json", "--discover-s", f"{discover_s:g}",
                                 "--chunk-kb", str(chunk_kb), "--timeout", f"{timeout_s:g}",
                                 "--answer-timeout", f"{answer_timeout_s:g}", "--broker", broker.address],
                                stdout=subprocess.PIPE, stderr=open(folder / "push.stderr", "wb"), text=True,
                                cwd=HERE.parent)
        out = push.stdout.read()
        _, status, usage = os.wait4(push.pid, 0)
        push.returncode = os.waitstatus_to_exitcode(status)
        result["push_s"] = round(time.monotonic() - push_started, 2)
        result["pusher_cpu_s"] = round(usage.ru_utime + usage.ru_stime, 2)
        result["broker_cpu_s"] = round(cpu_s(broker.process.pid) - broker_cpu0, 2)
        meter.fresh(SYS_BYTES_SENT)
        result["broker_received_bytes"] = meter.value(SYS_BYTES_RECEIVED)[0] - received0
        result["broker_sent_bytes"] = meter.value(SYS_BYTES_SENT)[0] - sent0
        result["push_exit"] = push.returncode
        try:
            table = json.loads(out)
        except json.JSONDecodeError:
            table = []
            result["failures"].append(f"push printed no JSON (exit {push.returncode}): see {folder}/push.stderr")
        activated = [r for r in table if r["result"] == "activated"]
        result["activated"] = len(activated)
        result["slowest_board_s"] = round(max((r["seconds"] for r in activated), default=0.0), 2)
        for r in table:
            if r["result"] != "activated":
                result["failures"].append(f"{r['device']}: {r['result']}: {r['reason']}")
        missing = boards - len(table)
        if missing > 0:
            result["failures"].append(f"{missing} board(s) not in the push's table (not discovered)")
        reports = []
        for w in workers:
            w.stdin.write("report\n")
            reports.append(json.loads(w.stdout.readline()))
        result["installed"] = sum(len(r["installed"]) for r in reports)
        result["active_on_disk"] = sum(r["active_on_disk"] for r in reports)
        result["dropped_chunks"] = sum(r["dropped_chunks"] for r in reports)
        result["dropped_requests"] = sum(r["dropped_requests"] for r in reports)
        result["rss_kb_per_process"] = [r["rss_kb"] for r in reports]
        result["rss_kb_per_board"] = round(sum(r["rss_kb"] for r in reports) / boards, 1)
        result["rss_kb_per_board_above_base"] = round(
            sum(rep["rss_kb"] - rd["rss_base_kb"] for rep, rd in zip(reports, ready)) / boards, 1)
        result["threads_per_process"] = max(r["threads"] for r in reports)
        result["worker_cpu_s"] = round(sum(rep["cpu_s"] - rd["cpu_s"] for rep, rd in zip(reports, ready)), 2)
        result["timeline_s"] = timeline([t for r in reports for t in r["timings"].values()], push_started_wall)
    finally:
        for w in workers:
            if w.stdin and not w.stdin.closed:
                w.stdin.close()
        for w in workers:
            try:
                w.wait(60)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait(10)
        meter.stop()
        broker.stop()
    return result


def timeline(timings: list[dict[str, float]], started: float) -> dict[str, list[float]]:
    """For each step of the conversation, [median, 90th percentile, max] seconds from the push's start
    over the boards that got there (and how many did)."""
    steps = {}
    for step in ("begin", "accepted", "received", "verified", "activated", "missing", "rejected"):
        seconds = sorted(t[step] - started for t in timings if step in t)
        if seconds:
            steps[step] = [round(seconds[len(seconds) // 2], 2), round(seconds[int(len(seconds) * 0.9)], 2),
                           round(seconds[-1], 2), len(seconds)]
    return steps


def make_material(folder: Path) -> tuple[Path, Path]:
    """The signing key pair and the signed bundle pushed (the demo float model, version 2.0)."""
    from crafted_models import make_bundle, make_keys
    from support import DEMO_FLOAT_MODEL

    keys = make_keys(folder, "dev")
    return make_bundle(folder / "digits-2.0.eab", DEMO_FLOAT_MODEL, keys["dev"], "2.0"), folder


def print_line(r: dict) -> None:
    size = r["bundle_bytes"]
    print(f"{r['boards']:>5} boards ({r['processes']} proc): bundle {size:,} B; all reported in {r.get('push_s', 0):.1f} s "
          f"(discovery {r['discover_s']:g} s); broker received {r.get('broker_received_bytes', 0):,} B "
          f"({r.get('broker_received_bytes', 0) / size:.2f} x bundle), sent {r.get('broker_sent_bytes', 0):,} B "
          f"({r.get('broker_sent_bytes', 0) / size:.1f} x); pusher CPU {r.get('pusher_cpu_s', 0):.1f} s, broker CPU "
          f"{r.get('broker_cpu_s', 0):.1f} s, board processes CPU {r.get('worker_cpu_s', 0):.1f} s; RSS {r.get('rss_kb_per_board', 0):,.0f} KiB/board "
          f"({r.get('rss_kb_per_board_above_base', 0):,.0f} above the interpreter); activated "
          f"{r.get('activated', 0)}/{r['boards']}, stored {r.get('active_on_disk', 0)}; failures {len(r['failures'])}",
          flush=True)
    for step, (median, p90, slowest, count) in r.get("timeline_s", {}).items():
        print(f"      {step:<9} {count:>5} boards; s from the push's start: median {median}, 90% {p90}, max {slowest}")
    for failure in r["failures"][:10]:
        print(f"      {failure}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--boards", default="10,100,1000", help="the steps: comma-separated board counts")
    parser.add_argument("--per-process", type=int, default=250, help="board endpoints per worker process")
    parser.add_argument("--discover-s", type=float, default=10.0,
                        help="push --discover-s (default 10: at 1,000 boards on 2 cores, 3 s heard only some of them)")
    parser.add_argument("--chunk-kb", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=300.0, help="push --timeout")
    parser.add_argument("--answer-timeout", type=float, default=10.0,
                        help="push --answer-timeout (default 10, push's own; 1,000 endpoints on 2 cores answer late)")
    parser.add_argument("--json-out", type=Path, help="write every step's numbers here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, stores)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for name in ("--broker", "--folder", "--trusted-key", "--model", "--video"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return run_worker(args)
    steps = [int(n) for n in args.boards.split(",")]
    limit = raise_open_files_limit()
    if max(steps) + 50 > limit:
        print(f"the open-files limit is {limit}: too few for {max(steps)} board connections in one mosquitto "
              "(raise `ulimit -n`)", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="fleet-load-"))
    print(f"fleet load: steps {steps}, at most {args.per_process} endpoints per process, open-files limit {limit}, "
          f"work in {root}", flush=True)
    bundle, keys = make_material(root)
    results = []
    try:
        for boards in steps:
            result = run_step(boards, root / f"step-{boards}", args.per_process, args.discover_s, args.chunk_kb,
                              bundle, keys, args.timeout, args.answer_timeout)
            results.append(result)
            print_line(result)
    finally:
        if args.json_out:
            args.json_out.write_text(json.dumps(results, indent=1))
        if not args.keep:
            import shutil

            shutil.rmtree(root, ignore_errors=True)
    return 0 if all(r.get("activated") == r["boards"] and not r["failures"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
