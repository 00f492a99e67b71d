"""`edge-agent push` end to end: a real mosquitto, real agents as child processes, real signed bundles of
the demo models. A push hot-swaps between two frames and survives a restart; rollback over MQTT;
`models list`; a model that crashes the runtime; probation's automatic rollback; two pushes at once;
a lost chunk; a broker that restarts in the middle of a transfer; the one-line trial's --trusted-key."""

from __future__ import annotations

import hashlib
import threading
import time
import json
import signal
import subprocess
import sys

import pytest

from support import DEMO_FLOAT_MODEL, DEMO_MODEL, DEMO_VIDEO, REPO, Broker, Collector, wait_until
from crafted_models import contrast_lookup_model, crashing_model, make_bundle, make_keys, rebundle, slow_on_contrast_model
from edge_agent.delivery.update_protocol import push_topic
from push_support import (FRAME_INTERVAL_S, agent_config, events, predictions, push, push_cli, send_begin, send_end,
                          wait_serving)

INT8_SHA = hashlib.sha256(DEMO_MODEL.read_bytes()).hexdigest()
FLOAT_SHA = hashlib.sha256(DEMO_FLOAT_MODEL.read_bytes()).hexdigest()
GAP_TOLERANCE_S = 0.3  # generous: it only has to catch a stall, not measure jitter


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    """Keys `dev` (trusted by the boards) and `other`, and bundles v1 (int8) and v2 (float32) signed by dev."""
    folder = tmp_path_factory.mktemp("bundles")
    keys = make_keys(folder, "dev", "other")
    return {
        "folder": folder,
        "dev_pub": folder / "dev.pub",
        "dev_key": folder / "dev.key",
        "dev": keys["dev"],
        "v1": make_bundle(folder / "v1.eab", DEMO_MODEL, keys["dev"], "1.0"),
        "v2": make_bundle(folder / "v2.eab", DEMO_FLOAT_MODEL, keys["dev"], "2.0"),
    }


def start_agent(agent_process, tmp_path, broker, device, signed, **config):
    config_path = agent_config(tmp_path / f"{device}.toml", broker, device, signed["v1"], [signed["dev_pub"]], **config)
    return agent_process("run", "--config", str(config_path)), config_path


def test_push_swaps_between_two_frames_survives_a_restart_and_rolls_back(
        tmp_path, session_broker, collect, agent_process, signed):
    collector = collect(session_broker, ["edge/swapper/#"])
    agent, config = start_agent(agent_process, tmp_path, session_broker, "swapper", signed, top='groups = ["kitchen"]')
    wait_serving(collector, "swapper", INT8_SHA, count=10)

    result = push_cli(session_broker, signed["v2"], "--device", "swapper", "--json", "--key", str(signed["dev_key"]))
    assert result.returncode == 0, result.stderr + agent.stderr
    assert "pushing digits 2.0 (" in result.stderr and "bytes, 3 chunk(s) of 64 KiB) to 1 device(s)" in result.stderr
    assert "swapper: sending 0/3" in result.stderr and "swapper: activated 3/3" in result.stderr
    (answer,) = json.loads(result.stdout)
    assert answer["device"] == "swapper" and answer["result"] == "activated"
    assert (answer["previous"]["version"], answer["new"]["version"]) == ("1.0", "2.0")
    assert answer["new"]["sha256"] == FLOAT_SHA and answer["seconds"] < 30
    wait_serving(collector, "swapper", FLOAT_SHA, count=10)

    stream = predictions(collector, "swapper")
    seqs = [p["seq"] for p in stream]
    assert seqs == list(range(1, len(seqs) + 1)), "no prediction was lost or repeated across the swap"
    first_new = next(i for i, p in enumerate(stream) if p["model"]["sha256"] == FLOAT_SHA)
    assert stream[first_new]["model"] == {"name": "digits", "sha256": FLOAT_SHA, "version": "2.0"}
    assert {p["model"]["sha256"] for p in stream[first_new:]} == {FLOAT_SHA}, "one switch, no flapping"
    gaps = [b["ts"] - a["ts"] for a, b in zip(stream[first_new - 5:], stream[first_new - 4: first_new + 5])]
    assert max(gaps) <= FRAME_INTERVAL_S + GAP_TOLERANCE_S, f"a gap of {max(gaps):.3f} s around the swap"

    kinds = [e["event"] for e in events(collector, "swapper")]
    assert kinds == ["accepted", "received", "verified", "activated"], kinds
    assert len({e["transfer_id"] for e in events(collector, "swapper")}) == 1
    # the state is published as soon as the model changed, not only every state_interval_s
    last_state = lambda: json.loads(collector.payloads("edge/swapper/state")[-1])
    assert wait_until(lambda: last_state()["pipelines"]["cam"]["model"]["version"] == "2.0", 10), last_state()
    assert last_state()["groups"] == ["kitchen"]

    listing = subprocess.run([sys.executable, "-m", "edge_agent", "models", "list", "--config", str(config), "--json"],
                             capture_output=True, text=True, cwd=REPO, timeout=30)
    history = json.loads(listing.stdout)["pipelines"]["cam"]
    assert [(m["role"], m["version"], m["origin"]) for m in history] == [
        ("active", "2.0", answer_transfer(collector)), ("previous", "1.0", "config")]

    # a restart keeps the pushed model: the store's active one wins while the config names the same file
    agent.signal(signal.SIGTERM)
    assert agent.wait(20) == 0, agent.stderr
    agent = agent_process("run", "--config", str(config))
    wait_serving(collector, "swapper", FLOAT_SHA, count=5)
    assert wait_until(lambda: "from the model store" in agent.stderr, 5), agent.stderr

    # rollback over MQTT
    result = subprocess.run([sys.executable, "-m", "edge_agent", "models", "rollback", "--device", "swapper",
                             "--broker", session_broker.address, "--key", str(signed["dev_key"])],
                            capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rolled back (requested)  digits 2.0  digits 1.0" in result.stdout
    assert wait_until(lambda: predictions(collector, "swapper")[-1]["model"]["sha256"] == INT8_SHA, 10)
    wait_serving(collector, "swapper", INT8_SHA, count=5)
    agent.signal(signal.SIGTERM)
    assert agent.wait(20) == 0, agent.stderr
    seqs = [p["seq"] for p in predictions(collector, "swapper")]
    assert seqs == list(range(1, len(seqs) + 1)), "numbering goes on across the restart and the rollback"


def answer_transfer(collector: Collector) -> str:
    return events(collector, "swapper")[0]["transfer_id"]


def test_a_model_that_crashes_the_runtime_kills_only_the_selftest_child(
        tmp_path, session_broker, collect, agent_process, signed):
    """A required input marked omitted passes every check a reader can make and makes the runtime die with
    SIGSEGV while building the interpreter. The self-test child dies; the agent reports it."""
    collector = collect(session_broker, ["edge/crashy/#"])
    agent, _ = start_agent(agent_process, tmp_path, session_broker, "crashy", signed, runtime="tflite-runtime")
    wait_serving(collector, "crashy", INT8_SHA)
    bundle = rebundle(tmp_path / "crash.eab", signed["v1"], crashing_model(), signed["dev"], "6.6.6")
    (result,) = push(session_broker, bundle, ["crashy"], key=signed["dev"])
    assert result.result == "rejected"
    assert "the model crashed the interpreter (signal 11)" in result.reason
    wait_serving(collector, "crashy", INT8_SHA)
    assert agent.process.poll() is None, "the agent survived"


def test_a_model_that_fails_on_live_frames_is_rolled_back_during_probation(
        tmp_path, session_broker, collect, agent_process, signed):
    """The contrast-lookup model passes its self-test (flat frames) and fails on the first real digit frame
    (gather index out of bounds): the pipeline fails, the agent restarts it with the previous model."""
    collector = collect(session_broker, ["edge/probe/#"])
    float_v1 = make_bundle(tmp_path / "float-v1.eab", DEMO_FLOAT_MODEL, signed["dev"], "1.0")
    config = agent_config(tmp_path / "probe.toml", session_broker, "probe", float_v1, [signed["dev_pub"]],
                          models="probation_s = 30")
    agent = agent_process("run", "--config", str(config))
    wait_serving(collector, "probe", FLOAT_SHA)
    bundle = rebundle(tmp_path / "contrast.eab", float_v1, contrast_lookup_model(), signed["dev"], "9.0")
    (result,) = push(session_broker, bundle, ["probe"], key=signed["dev"], watch_s=10)
    assert result.result == "rolled back", result
    assert "gather index out of bounds" in result.reason
    assert (result.previous["version"], result.new["version"]) == ("1.0", "9.0")
    wait_serving(collector, "probe", FLOAT_SHA, count=10)
    rolled = [e for e in events(collector, "probe") if e["event"] == "rolled_back"]
    assert len(rolled) == 1 and rolled[0]["transfer_id"] == events(collector, "probe")[0]["transfer_id"]
    seqs = [p["seq"] for p in predictions(collector, "probe")]
    assert seqs == list(range(1, len(seqs) + 1)), "the restarted pipeline goes on counting"
    assert agent.process.poll() is None


@pytest.mark.slow
def test_a_model_whose_invoke_stalls_is_rolled_back_before_the_watchdog_fires(
        tmp_path, session_broker, collect, agent_process, signed):
    """Under a systemd watchdog of 2 s the probation limit is 1 s. The slow-on-contrast model answers flat
    frames at once (self-test passes) and takes ~3 s per real frame: the pipeline is replaced with the
    previous model while the old one is still stuck in invoke, and its late result is never published."""
    import socket

    collector = collect(session_broker, ["edge/stall/#"])
    float_v1 = make_bundle(tmp_path / "float-v1.eab", DEMO_FLOAT_MODEL, signed["dev"], "1.0")
    config = agent_config(tmp_path / "stall.toml", session_broker, "stall", float_v1, [signed["dev_pub"]])
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(str(tmp_path / "notify"))
        agent = agent_process("run", "--config", str(config),
                              env={"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "2000000"})
        wait_serving(collector, "stall", FLOAT_SHA)
        bundle = rebundle(tmp_path / "slow.eab", float_v1, slow_on_contrast_model(2e7), signed["dev"], "7.0")
        (result,) = push(session_broker, bundle, ["stall"], key=signed["dev"], watch_s=15)
        assert result.result == "rolled back", result
        assert "no inference for" in result.reason and "the limit during probation is 1 s" in result.reason
        wait_serving(collector, "stall", FLOAT_SHA, count=10)
        assert wait_until(lambda: "restarted with model digits 1.0" in agent.stderr, 5), agent.stderr
    stream = predictions(collector, "stall")
    assert [p["seq"] for p in stream] == list(range(1, len(stream) + 1)), "the stuck invoke's result was dropped"
    assert "7.0" not in {p["model"].get("version") for p in stream}


def test_two_pushes_at_once_one_is_refused_clearly(tmp_path, session_broker, collect, agent_process, signed):
    import threading

    collector = collect(session_broker, ["edge/twice/#"])
    start_agent(agent_process, tmp_path, session_broker, "twice", signed)
    wait_serving(collector, "twice", INT8_SHA)
    other = make_bundle(tmp_path / "v3.eab", DEMO_MODEL, signed["dev"], "3.0")
    results = {}
    threads = [threading.Thread(target=lambda b=b: results.__setitem__(b.name, push(session_broker, b, ["twice"], key=signed["dev"])[0]))
               for b in (signed["v2"], other)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    outcomes = sorted(r.result for r in results.values())
    assert outcomes == ["activated", "rejected"], results
    refused = next(r for r in results.values() if r.result == "rejected")
    assert refused.reason.startswith("busy with transfer push-"), refused.reason


def test_a_lost_chunk_is_asked_for_again_and_resent(tmp_path, session_broker, collect, agent_process, signed):
    collector = collect(session_broker, ["edge/lossy/#"])
    start_agent(agent_process, tmp_path, session_broker, "lossy", signed)
    wait_serving(collector, "lossy", INT8_SHA)
    (result,) = push(session_broker, signed["v2"], ["lossy"], key=signed["dev"], chunk_size=16 * 1024, skip_first=frozenset({3, 7}))
    assert result.result == "activated", result
    missing = [e for e in events(collector, "lossy") if e["event"] == "missing"]
    assert [e["missing"] for e in missing] == [[3, 7]]
    wait_serving(collector, "lossy", FLOAT_SHA)


def test_a_transfer_goes_on_after_the_broker_restarts(tmp_path, broker, agent_process, signed):
    """The broker forgets every session; the agent reconnects, subscribes again and keeps the transfer."""
    broker.start()
    collector = Collector(broker, ["edge/blip/#"])
    try:
        start_agent(agent_process, tmp_path, broker, "blip", signed, spool=False)
        wait_serving(collector, "blip", INT8_SHA)
        content = signed["v2"].read_bytes()
        chunk_size = 32 * 1024
        begin = send_begin(collector.client, signed["dev"], "blip", "blip-1", content, chunk_size)
        assert wait_until(lambda: [e["event"] for e in events(collector, "blip")] == ["accepted"], 10)
        for index in range(3):
            chunk = content[index * chunk_size:(index + 1) * chunk_size]
            info = collector.client.publish(push_topic("edge", "blip", "blip-1", f"chunk/{index}"), chunk, qos=1)
            info.wait_for_publish(5)
        collector.stop()
        broker.stop()
        broker.start()
        collector = Collector(broker, ["edge/blip/#"])
        assert wait_until(lambda: len(predictions(collector, "blip")) >= 3, 20), "the agent is back"
        for index in range(3, begin.chunks):
            chunk = content[index * chunk_size:(index + 1) * chunk_size]
            collector.client.publish(push_topic("edge", "blip", "blip-1", f"chunk/{index}"), chunk, qos=1)
        send_end(collector.client, signed["dev"], "blip", "blip-1")
        assert wait_until(lambda: any(e["event"] == "activated" for e in events(collector, "blip")), 20), \
            events(collector, "blip")
        wait_serving(collector, "blip", FLOAT_SHA)
    finally:
        collector.stop()


def test_a_broker_with_a_small_message_limit_needs_smaller_chunks_and_says_so(tmp_path, agent_process, signed):
    broker = Broker(tmp_path, extra_config=("max_packet_size 20000",)).start()
    collector = Collector(broker, ["edge/small/#"])
    try:
        start_agent(agent_process, tmp_path, broker, "small", signed)
        wait_serving(collector, "small", INT8_SHA)
        (result,) = push(broker, signed["v2"], ["small"], key=signed["dev"], timeout_s=30)
        assert result.result == "rejected" and "the broker closed the connection 3 times" in result.reason, result
        assert "push again with a smaller --chunk-kb" in result.reason and result.seconds < 15
        assert wait_until(lambda: any("aborted by the pusher: the broker closed" in e["reason"]
                                      for e in events(collector, "small")), 5), "the board was told at once"
        (result,) = push(broker, signed["v2"], ["small"], key=signed["dev"], chunk_size=16 * 1024)
        assert result.result == "activated", result
        wait_serving(collector, "small", FLOAT_SHA)
    finally:
        collector.stop()
        broker.stop()


def test_the_one_line_trial_verifies_pushes_with_trusted_key(tmp_path, session_broker, collect, agent_process, signed):
    collector = collect(session_broker, ["edge/trial/#"])
    agent_process("run", "--model", str(signed["v1"]), "--source", str(DEMO_VIDEO), "--loop", "--max-fps", "20",
                  "--broker", session_broker.address, "--device-id", "trial", "--pipeline", "cam",
                  "--state-dir", str(tmp_path / "state"), "--trusted-key", str(signed["dev_pub"]))
    wait_serving(collector, "trial", INT8_SHA)
    unsigned = make_bundle(tmp_path / "unsigned.eab", DEMO_FLOAT_MODEL, None, "2.0")
    (result,) = push(session_broker, unsigned, ["trial"], key=signed["dev"])
    assert result.result == "rejected" and "is not signed" in result.reason
    (result,) = push(session_broker, signed["v2"], ["trial"], key=signed["dev"])
    assert result.result == "activated", result
    wait_serving(collector, "trial", FLOAT_SHA)


def test_a_device_that_does_not_answer_is_reported_as_such(session_broker, signed):
    from edge_agent.host.push_results import format_results

    (result,) = push(session_broker, signed["v2"], ["ghost"], key=signed["dev"], answer_timeout_s=0.5)
    assert result.result == "no answer" and "no answer to begin within 0.5 s" in result.reason
    table = format_results([result])
    assert table.splitlines()[0].split() == ["device", "result", "previous", "new", "seconds"]
    assert "ghost   no answer: no answer to begin within 0.5 s (is the agent running, conne…  -         -        0.5" in table
    assert table.splitlines()[-2] == "0 of 1 device(s) activated"
    assert table.splitlines()[-1] == f"ghost: {result.reason}", "the whole reason follows the table"


def test_push_answer_timeout_is_an_option(session_broker, signed):
    """--answer-timeout: how long a board has to answer begin (a fleet on a busy broker needs more than 10 s)."""
    started = time.monotonic()
    done = push_cli(session_broker, signed["v2"], "--device", "ghost", "--answer-timeout", "0.5", "--json",
                    "--key", str(signed["dev_key"]))
    assert done.returncode == 1, done.stderr
    (result,) = json.loads(done.stdout)
    assert result["result"] == "no answer" and "within 0.5 s" in result["reason"]
    assert time.monotonic() - started < 60
    for bad in ("0", "-1", "nan"):
        refused = push_cli(session_broker, signed["v2"], "--device", "ghost", "--answer-timeout", bad)
        assert refused.returncode == 2 and "--answer-timeout: expected seconds above 0" in refused.stderr, refused.stderr


def test_a_push_carries_on_when_the_broker_restarts_mid_transfer_and_mid_install(tmp_path, broker, agent_process,
                                                                                  signed):
    """The issue's defects: `edge-agent push` died with "The client is not currently connected" when the broker
    restarted mid-push (leaving the board busy), and in another run waited at "verifying" while the board had
    activated. Here mosquitto restarts twice during one real Pusher run: while chunks are in flight and while
    the board installs; the push ends `activated`, and the board serves the new model."""
    from edge_agent.host.fleet import BrokerAddress
    from edge_agent.host.push import Pusher, PushOptions

    broker.start()
    collector = Collector(broker, ["edge/restarts/#"])
    start_agent(agent_process, tmp_path, broker, "restarts", signed, spool=False)
    wait_serving(collector, "restarts", INT8_SHA)
    collector.stop()
    options = PushOptions(BrokerAddress(broker.host, broker.port), key=signed["dev"], chunk_size=4096, window=1,
                          timeout_s=120)
    pusher = Pusher(signed["v2"].read_bytes(), ["restarts"], options, name="v2.eab")
    target = pusher.targets["restarts"]
    results: list = []
    failures: list = []

    def run() -> None:
        try:
            results.extend(pusher.run())
        except Exception as err:  # the test reports it below
            failures.append(err)

    thread = threading.Thread(target=run, name="pusher")
    started = time.monotonic()
    thread.start()
    assert wait_until(lambda: len(target.acked) >= 10, 30), target.state
    broker.stop()
    broker.start()
    assert wait_until(lambda: target.state in ("installing", "done"), 60), (target.state, len(target.acked))
    restarted_while_installing = target.state == "installing"
    broker.stop()
    broker.start()
    thread.join(120)
    assert not failures, failures
    (result,) = results
    assert result.result == "activated", result
    print(f"push through two broker restarts: {time.monotonic() - started:.1f} s "
          f"(second restart during the install: {restarted_while_installing})")
    collector = Collector(broker, ["edge/restarts/#"])
    try:
        wait_serving(collector, "restarts", FLOAT_SHA)
    finally:
        collector.stop()
