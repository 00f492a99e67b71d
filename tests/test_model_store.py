"""The parts of model delivery that need no broker: the model store, transfer reassembly, the protocol's
parsers, the config keys, the probation verdict, reload rules, and how the agent picks a pipeline's model."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
from pathlib import Path

import pytest

from support import DEMO_FLOAT_MODEL, DEMO_MODEL, DEMO_VIDEO, write_config
from edge_agent.config import ConfigError, load_config, parse_config
from edge_agent.delivery.store import ModelStore, StoredModel, StoreError, list_stores, pipeline_store
from edge_agent.delivery.transfer import Transfer, TransferError, disk_problem, remove_leftovers
from edge_agent.delivery.update_protocol import (
    ProtocolError,
    PushBegin,
    chunk_count,
    parse_begin,
    parse_json_object,
    parse_models_topic,
)
from edge_agent.delivery.update_protocol import describe_bundle
from edge_agent.service.agent import Agent
from edge_agent.service.probation import DEFAULT_STALL_LIMIT_S, probation_failure, stall_limit_s
from edge_agent.service.reload import plan_reload
from edge_agent.service.selftest import pipeline_from_request, selftest_request

BASE = "edge/board/models"


def entry(store: ModelStore, content: bytes, version: str) -> StoredModel:
    return StoredModel(store.add_bytes(content), hashlib.sha256(content).hexdigest(), "m", version, "", f"t{version}")


# ---------------------------------------------------------------------------- the store

def test_the_store_keeps_the_newest_n_and_never_the_active_or_rollback_target(tmp_path):
    store = ModelStore(tmp_path / "models" / "cam", keep=3)
    models = [entry(store, bytes([0]) * 100, "0")]
    store.begin_history("/etc/model.tflite", models[0])
    for n in range(1, 5):
        models.append(entry(store, bytes([n]) * 100, str(n)))
        store.activate(models[-1], "/etc/model.tflite")
    with pytest.raises(StoreError, match="is missing: add the model file to the store before recording it"):
        store.activate(models[0], "/etc/model.tflite")  # its file was pruned
    assert [m.version for m in store.history()] == ["4", "3", "2"]
    assert sorted(p.name for p in store.folder.iterdir()) == sorted([m.file for m in models[2:]] + ["active.json"])
    assert store.active_for("/etc/model.tflite").version == "4"
    assert store.active_for("/etc/other.tflite") is None, "the config names another model: the config wins"

    given_up, restored = store.rollback()
    assert (given_up.version, restored.version) == ("4", "3")
    assert [m.version for m in store.history()] == ["3", "2"]
    assert store.path(given_up).exists(), "a rollback keeps the model it leaves (retired) until keep evicts it"
    assert [m.version for m in store.retired()] == ["4"]
    store.rollback()
    with pytest.raises(StoreError, match="nothing to roll back to"):
        store.rollback()
    assert [m.version for m in store.history()] == ["2"] and store.path(models[2]).exists()
    assert [m.version for m in store.retired()] == ["3", "4"] and all(store.path(m).exists() for m in models[3:])

    store = ModelStore(tmp_path / "models" / "tight", keep=1)  # keep = 1 still keeps the rollback target
    store.begin_history("/m", entry(store, b"a" * 10, "a"))
    store.activate(entry(store, b"b" * 10, "b"), "/m")
    store.activate(entry(store, b"c" * 10, "c"), "/m")
    assert [m.version for m in store.history()] == ["c", "b"]
    assert list_stores(tmp_path)["cam"][0].version == "2"
    assert not list(tmp_path.rglob(".*.tmp")), "no temporary file is left behind"

    store = ModelStore(tmp_path / "models" / "cam", keep=3)
    store.activate(entry(store, bytes([9]) * 100, "9"), "/etc/model.tflite")  # the oldest retired model makes room
    assert [m.version for m in store.history()] == ["9", "2"] and [m.version for m in store.retired()] == ["3"]
    assert not store.path(models[4]).exists() and store.path(models[3]).exists()


def test_a_power_cut_before_the_record_leaves_the_old_model_active(tmp_path):
    """A model file written into the store but never recorded (the power went before active.json was
    replaced) changes nothing; the next activation removes it."""
    store = pipeline_store(tmp_path, "cam")
    old = entry(store, b"old" * 10, "1")
    store.begin_history("/m", old)
    record = store.active_path.read_bytes()
    orphan = store.add_bytes(b"half-installed" * 10)
    assert store.active_path.read_bytes() == record and store.active().version == "1"
    store.activate(entry(store, b"new" * 10, "2"), "/m")
    assert not (store.folder / orphan).exists()


def test_a_damaged_record_is_reported_with_its_path(tmp_path):
    store = pipeline_store(tmp_path, "cam")
    store.folder.mkdir(parents=True)
    store.active_path.write_text("{not json")
    with pytest.raises(StoreError, match=r"active.json cannot be read .*move it aside"):
        store.history()
    store.active_path.write_text('{"history": [{"file": 1}]}')
    with pytest.raises(StoreError, match="not a model store record"):
        store.active()


# ---------------------------------------------------------------------------- transfers

def make_begin(content: bytes, chunk_size: int = 1024, transfer_id: str = "t1") -> PushBegin:
    return describe_bundle(transfer_id, content, chunk_size)


def test_chunks_in_any_order_and_twice_reassemble_the_bundle(tmp_path):
    content = bytes(range(256)) * 10  # 2560 bytes: chunks of 1024, 1024, 512
    transfer = Transfer(make_begin(content), tmp_path / "incoming", 1 << 20)
    for index in (2, 0, 2):
        transfer.write_chunk(index, content[index * 1024:(index + 1) * 1024])
    assert transfer.missing() == [1]
    transfer.write_chunk(1, content[1024:2048])
    path = transfer.complete()
    assert path.read_bytes() == content and path.name == "t1.part"


def test_bad_chunks_and_hashes_are_transfer_errors_and_leave_nothing(tmp_path):
    content = b"x" * 3000
    folder = tmp_path / "incoming"
    transfer = Transfer(make_begin(content), folder, 1 << 20)
    with pytest.raises(TransferError, match=r"chunk 3 is out of range: transfer t1 has 3 chunks \(0 to 2\)"):
        transfer.write_chunk(3, content[:1024])
    with pytest.raises(TransferError, match="chunk 2 holds 1024 bytes; it must hold 952"):
        transfer.write_chunk(2, content[:1024])
    transfer.discard()
    assert list(folder.iterdir()) == []

    wrong = dataclasses.replace(make_begin(content, transfer_id="t2"), sha256=hashlib.sha256(b"other").hexdigest())
    transfer = Transfer(wrong, folder, 1 << 20)
    for index in range(3):
        transfer.write_chunk(index, content[index * 1024:(index + 1) * 1024])
    with pytest.raises(TransferError, match="the SHA-256 of the received bytes is .* damaged in transit"):
        transfer.complete()
    transfer.discard()
    assert list(folder.iterdir()) == []

    with pytest.raises(TransferError, match=r"this device accepts at most 0.0 MB \(models.max_mb\)"):
        Transfer(make_begin(content), folder, 1000)


def test_disk_errors_say_what_the_disk_refused(tmp_path):
    full = disk_problem(OSError(errno.ENOSPC, "No space left on device"), tmp_path / "x.part")
    assert full.startswith("the disk is full") and "free space" in full
    assert "file-size limit" in disk_problem(OSError(errno.EFBIG, "File too large"), tmp_path / "x.part")
    assert "must be writable" in disk_problem(OSError(errno.EROFS, "Read-only file system"), tmp_path / "x.part")
    (tmp_path / "old.part").write_bytes(b"left by a power cut")
    assert remove_leftovers(tmp_path) == 1 and not (tmp_path / "old.part").exists()


# ---------------------------------------------------------------------------- the protocol

def test_begin_messages_are_checked_field_by_field():
    good = make_begin(b"y" * 5000)
    assert parse_begin(good.to_json().encode(), "t1") == good
    cases = [
        (b"\xff", "the begin payload is not JSON"),
        (b"[1, 2]", "must be a JSON object, got list"),
        (good.to_json().encode(), "does not match the topic's 'other'"),
        (json.dumps({**json.loads(good.to_json()), "sha256": "ABC"}).encode(), "sha256 must be 64 lower-case hex"),
        (json.dumps({**json.loads(good.to_json()), "chunks": 7}).encode(), "make 5 chunks, not 7"),
        (json.dumps({**json.loads(good.to_json()), "chunk_size": 10}).encode(), "chunk_size must be a whole number >= 256"),
        (json.dumps({**json.loads(good.to_json()), "size": True}).encode(), "size must be a whole number"),
        (json.dumps({**json.loads(good.to_json()), "name": "../x"}).encode(), "name must be a file name"),
    ]
    for payload, message in cases:
        with pytest.raises(ProtocolError, match=message.replace("(", r"\(").replace(")", r"\)")):
            parse_begin(payload, "other" if "topic's" in message else "t1")


def test_request_topics_are_taken_apart():
    assert parse_models_topic(f"{BASE}/push/t-1/begin", BASE).kind == "begin"
    chunk = parse_models_topic(f"{BASE}/push/t-1/chunk/12", BASE)
    assert (chunk.kind, chunk.transfer_id, chunk.index) == ("chunk", "t-1", 12)
    assert parse_models_topic(f"{BASE}/rollback", BASE).kind == "rollback"
    assert parse_models_topic(f"{BASE}/push/t-1/abort", BASE).kind == "abort"
    with pytest.raises(ProtocolError, match="chunk index 'x' .* is not a whole number"):
        parse_models_topic(f"{BASE}/push/t-1/chunk/x", BASE)
    with pytest.raises(ProtocolError, match="is not a model request topic"):
        parse_models_topic(f"{BASE}/push/t-1/begin/extra", BASE)
    with pytest.raises(ProtocolError, match="must be a JSON object"):
        parse_json_object(b'"text"', "rollback")


# ---------------------------------------------------------------------------- config, probation, reload

def minimal(**extra) -> dict:
    return {"pipelines": {"cam": {"model": "m.tflite", "source": "0"}}, **extra}


def test_groups_and_models_settings_and_their_errors():
    config = parse_config(minimal(groups=["kitchen", "kitchen", "ground-floor"],
                                  models={"keep": 5, "max_mb": 8, "probation_s": 0, "enabled": False}))
    assert config.groups == ("kitchen", "ground-floor")
    assert (config.models.keep, config.models.max_mb, config.models.probation_s, config.models.enabled) == (5, 8.0, 0.0, False)
    assert config.models.transfer_timeout_s == 120 and config.models.selftest_timeout_s == 60
    with pytest.raises(ConfigError) as err:
        parse_config(minimal(groups=["a/b"], models={"keep": 0, "max_mb": "big", "retries": 3}))
    assert err.value.problems == [
        "groups: expected a list of group names without '/', '+', '#' or spaces, got ['a/b']",
        "models.keep: expected a whole number >= 1, got 0",
        "models.max_mb: expected a number >= 0.001, got 'big'",
        "models.retries: unknown key (check its spelling in the README's configuration reference)",
    ]


def test_unsigned_pushes_need_an_explicit_allow_unsigned_models():
    assert parse_config(minimal()).allow_unsigned_models and not parse_config(minimal()).allow_unsigned_pushes
    assert parse_config(minimal(allow_unsigned_models=True)).allow_unsigned_pushes


def test_probation_verdicts():
    assert probation_failure("running", "", 0.3, 10) == ""
    assert probation_failure("stopped", "", 99, 10) == ""
    assert probation_failure("failed", "RuntimeError: boom", 0.1, 10) == "the pipeline failed with the new model: RuntimeError: boom"
    assert probation_failure("running", "", 12.5, 10) == "no inference for 12.5 s (the limit during probation is 10 s)"
    assert stall_limit_s(30.0) == 15.0 and stall_limit_s(0.0) == DEFAULT_STALL_LIMIT_S
    assert stall_limit_s(30.0, max_fps=20) == 15.0
    assert stall_limit_s(30.0, max_fps=0.1) == 30.0, "a loop paced at one frame per 10 s beats that seldom"


def test_reload_keeps_models_settings_until_a_restart_and_applies_groups():
    old = parse_config(minimal())
    plan = plan_reload(old, parse_config(minimal(models={"keep": 9}, groups=["new"], allow_unsigned_models=True)))
    assert plan.ignored_keys == ["allow_unsigned_models", "models"]
    assert "groups" not in plan.ignored


def test_the_selftest_request_carries_the_pipeline_config_whole(tmp_path):
    config = load_config(write_config(tmp_path / "agent.toml", """
[pipelines.other]
model = "o.tflite"
source = "0"
[pipelines.cam]
model = "m.eab"
labels = "labels.txt"
source = { uri = "videos/in.mp4", loop = true }
delegate = { path = "/lib/d.so", options = { a = 1, fast = true } }
threshold = 0.4
[pipelines.cam.preprocess]
mean = [1, 2, 3]
"""))
    pipeline = config.pipelines[1]
    request = json.loads(json.dumps(selftest_request(config, "cam", "m.eab", 1000, 10), default=str))
    assert pipeline_from_request(request) == pipeline
    assert pipeline.source.uri == str(tmp_path / "videos/in.mp4")  # relative paths as the agent resolved them


# ---------------------------------------------------------------------------- the agent's choice of model

def test_the_agent_uses_the_stored_model_and_falls_back_when_it_cannot(tmp_path, caplog):
    config = parse_config({"state_dir": str(tmp_path), "pipelines": {"cam": {"model": str(DEMO_MODEL),
                                                                             "source": str(DEMO_VIDEO)}}})
    agent = Agent(config)
    store = pipeline_store(tmp_path, "cam")
    content = DEMO_FLOAT_MODEL.read_bytes()
    store.begin_history(str(DEMO_MODEL), entry(store, content, "2"))
    assert agent.factory.build_model(config, config.pipelines[0]).ref.sha256 == hashlib.sha256(content).hexdigest()

    store.path(store.active()).write_bytes(content[:5000])  # damaged on disk
    caplog.set_level(logging.ERROR)
    assert agent.factory.build_model(config, config.pipelines[0]).ref.sha256 == hashlib.sha256(DEMO_MODEL.read_bytes()).hexdigest()
    assert "cannot be used" in caplog.text and "using the config's model" in caplog.text

    store.active_path.write_text("{damaged")
    assert agent.factory.build_model(config, config.pipelines[0]).ref.name == "digits_int8"
    assert "move it aside" in caplog.text


def test_a_stored_model_is_ignored_once_the_config_names_another(tmp_path):
    config = parse_config({"state_dir": str(tmp_path), "pipelines": {"cam": {"model": str(DEMO_FLOAT_MODEL),
                                                                             "source": str(DEMO_VIDEO)}}})
    store = pipeline_store(tmp_path, "cam")
    store.begin_history(str(DEMO_MODEL), entry(store, DEMO_MODEL.read_bytes(), "1"))
    assert Agent(config).factory.build_model(config, config.pipelines[0]).ref.name == "digits_float32"
    assert Path(store.path(store.active())).exists(), "the store is left as it was"


NO_TF_PUSH = """
import importlib.abc, json, sys
class NoTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("tensorflow", "keras", "tf_keras"):
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, NoTensorFlow())
from edge_agent.cli import main
import edge_agent.host.fleet, edge_agent.host.push, edge_agent.host.rollback, edge_agent.service.model_updates
statuses = [main(["push", sys.argv[1], "--device", "x", "--broker", "127.0.0.1:1"]),
            main(["models", "rollback", "--device", "x", "--broker", "127.0.0.1:1"]),
            main(["models", "list", "--state-dir", sys.argv[2]])]
print(json.dumps({"statuses": statuses, "loaded": sorted(m for m in sys.modules if m.startswith(("tensorflow", "keras")))}))
"""


def test_push_and_models_commands_work_without_tensorflow(tmp_path):
    import subprocess
    import sys

    from support import REPO
    from crafted_models import make_bundle

    bundle = make_bundle(tmp_path / "m.eab", DEMO_MODEL, None, "1.0")
    result = subprocess.run([sys.executable, "-c", NO_TF_PUSH, str(bundle), str(tmp_path)], capture_output=True,
                            text=True, cwd=REPO, timeout=60)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"statuses": [1, 1, 0], "loaded": []}, result.stderr
    assert "cannot reach the MQTT broker at 127.0.0.1:1" in result.stderr
