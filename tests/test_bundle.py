"""Model bundles and signing keys, without TensorFlow: real Ed25519 keys, real bundles of the demo
model, the `edge-agent keys/bundle/edgetpu-check` commands, the device's trust rule, and the agent
running a signed bundle as a child process."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from support import DEMO, DEMO_FLOAT_MODEL, DEMO_MODEL, DEMO_TRUTH, DEMO_VIDEO, MODELS, REPO, write_config
from edge_agent.cli import main
from edge_agent.config import parse_config
from edge_agent.delivery.bundle import (
    BundleError,
    BundleTrustError,
    BundleVersionError,
    bundle_to_bytes,
    read_bundle,
    sign_manifest,
)
from edge_agent.delivery.keys import load_private_key, load_public_key
from edge_agent.delivery.manifest import FORMAT_VERSION
from edge_agent.host.metadata import CONVERSION_INFO_FILE, attach_files, conversion_info_bytes
from edge_agent.service.active_model import build_active_model
from edge_agent.service.model_source import open_model


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    status = main([str(a) for a in args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture
def keys(tmp_path, capsys):
    for name in ("dev", "other"):
        assert run_cli(capsys, "keys", "generate", tmp_path / name)[0] == 0
    return tmp_path


@pytest.fixture
def bundle_path(keys, capsys):
    out = keys / "digits.eab"
    status, stdout, stderr = run_cli(capsys, "bundle", "create", DEMO_MODEL, "--key", keys / "dev.key",
                                     "--name", "digits", "--version", "1.4.2", "-o", out)
    assert status == 0, stderr
    assert "signed by key" in stdout
    return out


def rewrite_member(path: Path, member: str, change) -> None:
    """Rebuild the zip with one member's bytes changed (what an attacker or a bad copy would do)."""
    with zipfile.ZipFile(path) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    members[member] = change(members[member])
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    path.write_bytes(buffer.getvalue())


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp"))


def test_keys_generate_writes_a_private_key_only_its_owner_can_read(keys, capsys):
    private, public = keys / "dev.key", keys / "dev.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) & 0o077 == 0o044  # world-readable, not writable
    assert private.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert load_private_key(private).public_key.key_id == load_public_key(public).key_id
    assert load_public_key(public).key_id != load_public_key(keys / "other.pub").key_id

    before = private.read_bytes()
    status, _, err = run_cli(capsys, "keys", "generate", keys / "dev")
    assert status == 2 and "already exists" in err and "--force" in err
    assert private.read_bytes() == before
    assert run_cli(capsys, "keys", "generate", keys / "dev", "--force")[0] == 0
    assert private.read_bytes() != before
    assert leftovers(keys) == []


def test_key_files_of_the_wrong_kind_are_named(keys, capsys):
    status, _, err = run_cli(capsys, "bundle", "create", DEMO_MODEL, "--key", keys / "dev.pub", "-o", keys / "x.eab")
    assert status == 2 and "public key" in err
    status, _, err = run_cli(capsys, "bundle", "verify", DEMO_MODEL, "--trusted-key", keys / "dev.key")
    assert status == 2 and "private key" in err
    assert not (keys / "x.eab").exists()


def test_create_and_verify_a_signed_bundle(bundle_path, keys, capsys):
    status, out, err = run_cli(capsys, "bundle", "verify", bundle_path, "--trusted-key", keys / "dev.pub", "--json")
    assert status == 0, err
    verdict = json.loads(out)
    manifest = verdict["manifest"]
    assert verdict["signed_by"] == load_public_key(keys / "dev.pub").key_id
    assert manifest["format_version"] == FORMAT_VERSION
    assert (manifest["name"], manifest["version"], manifest["task"]) == ("digits", "1.4.2", "classification")
    assert manifest["labels"] == [str(d) for d in range(10)]  # from the labels the model carries
    assert manifest["model"]["sha256"] == __import__("hashlib").sha256(DEMO_MODEL.read_bytes()).hexdigest()
    assert manifest["input"] == {"name": "image", "shape": [1, 8, 8, 1], "dtype": "int8",
                                 "quantization": {"scale": pytest.approx(1 / 255), "zero_point": -128}}
    assert manifest["preprocessing"] == {"resize": "stretch", "color": "rgb", "mean": [0.0], "std": [255.0]}
    assert manifest["created_at"].endswith("Z") and manifest["converter"]["bundled_by"].startswith("edge-agent")
    with zipfile.ZipFile(bundle_path) as archive:
        assert sorted(archive.namelist()) == ["manifest.json", "manifest.sig", "model.tflite"]
        assert archive.read("model.tflite") == DEMO_MODEL.read_bytes()


def test_tampered_model_bytes_are_refused(bundle_path, keys, capsys):
    rewrite_member(bundle_path, "model.tflite", lambda data: data[:-1] + bytes([data[-1] ^ 1]))
    status, _, err = run_cli(capsys, "bundle", "verify", bundle_path, "--trusted-key", keys / "dev.pub")
    assert status == 2
    assert "does not match the manifest" in err and "altered or damaged" in err


def test_tampered_manifest_is_refused(bundle_path, keys, capsys):
    rewrite_member(bundle_path, "manifest.json", lambda data: data.replace(b'"1.4.2"', b'"9.9.9"'))
    status, _, err = run_cli(capsys, "bundle", "verify", bundle_path, "--trusted-key", keys / "dev.pub")
    assert status == 2
    assert "signature does not match the manifest" in err


def test_a_bundle_signed_by_another_key_is_not_trusted(bundle_path, keys, capsys):
    other_id = load_public_key(keys / "other.pub").key_id
    status, _, err = run_cli(capsys, "bundle", "verify", bundle_path, "--trusted-key", keys / "other.pub")
    assert status == 2
    assert "not trusted here" in err and other_id in err
    # trusting both keys is fine
    status, _, err = run_cli(capsys, "bundle", "verify", bundle_path, "--trusted-key", keys / "other.pub",
                             "--trusted-key", keys / "dev.pub")
    assert status == 0, err


def test_unsigned_bundles_and_signing_later(keys, capsys):
    out = keys / "unsigned.eab"
    status, stdout, _ = run_cli(capsys, "bundle", "create", DEMO_MODEL, "-o", out)
    assert status == 0 and "UNSIGNED" in stdout
    status, _, err = run_cli(capsys, "bundle", "verify", out, "--trusted-key", keys / "dev.pub")
    assert status == 2 and "is not signed" in err
    signed = keys / "signed.eab"
    assert run_cli(capsys, "bundle", "sign", out, "--key", keys / "other.key", "-o", signed)[0] == 0
    assert run_cli(capsys, "bundle", "verify", signed, "--trusted-key", keys / "other.pub")[0] == 0
    assert run_cli(capsys, "bundle", "verify", out, "--trusted-key", keys / "other.pub")[0] == 2  # untouched
    assert run_cli(capsys, "bundle", "sign", out, "--key", keys / "dev.key")[0] == 0  # in place
    assert run_cli(capsys, "bundle", "verify", out, "--trusted-key", keys / "dev.pub")[0] == 0


def test_a_newer_manifest_format_is_refused_with_a_clear_message(bundle_path, keys, capsys):
    bundle = read_bundle(bundle_path)
    manifest = json.loads(bundle.manifest_bytes)
    manifest["format_version"] = FORMAT_VERSION + 1
    manifest_bytes = json.dumps(manifest).encode()
    key = load_private_key(keys / "dev.key")
    bundle_path.write_bytes(bundle_to_bytes(manifest_bytes, bundle.model, sign_manifest(manifest_bytes, key)))
    with pytest.raises(BundleVersionError, match="newer edge-agent"):
        read_bundle(bundle_path)
    status, _, err = run_cli(capsys, "bundle", "verify", bundle_path, "--trusted-key", keys / "dev.pub")
    assert status == 2 and f"format {FORMAT_VERSION + 1}" in err and "upgrade edge-agent" in err


@pytest.mark.parametrize("content, message", [
    (lambda good: good[: len(good) // 2], "damaged or truncated"),
    (lambda good: os.urandom(4096), "not a model bundle"),
    (lambda good: DEMO_MODEL.read_bytes(), "bare .tflite"),
    (lambda good: b"", "not a model bundle"),
])
def test_truncated_random_and_foreign_files_are_not_bundles(bundle_path, keys, capsys, content, message):
    bundle_path.write_bytes(content(bundle_path.read_bytes()))
    status, _, err = run_cli(capsys, "bundle", "verify", bundle_path, "--trusted-key", keys / "dev.pub")
    assert status == 2 and message in err
    assert len(err.strip().splitlines()) == 1  # one line, no traceback


def test_unexpected_members_are_refused(bundle_path, keys):
    with zipfile.ZipFile(bundle_path, "a") as archive:
        archive.writestr("extra.sh", b"#!/bin/sh\n")
    with pytest.raises(BundleError, match="unexpected bundle members"):
        read_bundle(bundle_path)


def test_nothing_is_left_at_out_when_bundle_create_fails(keys, capsys, tmp_path):
    out = tmp_path / "out.eab"
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n")
    cases = [
        ("bundle", "create", DEMO_MODEL, "--key", keys / "dev.key", "--labels", labels, "-o", out),  # 2 labels, 10 classes
        ("bundle", "create", REPO / "tests/model_files/not_a_model.tflite", "--key", keys / "dev.key", "-o", out),
        ("bundle", "create", DEMO_MODEL, "--key", keys / "missing.key", "-o", out),
        ("bundle", "create", DEMO_MODEL, "--labels", tmp_path / "nope.txt", "-o", out),
    ]
    for args in cases:
        status, _, err = run_cli(capsys, *args)
        assert status == 2, args
        assert err.startswith("edge-agent: ") and len(err.strip().splitlines()) == 1, err
        assert not out.exists(), args
    assert leftovers(tmp_path) == []


def test_sign_refuses_a_damaged_bundle_and_leaves_it_alone(bundle_path, keys, capsys):
    rewrite_member(bundle_path, "model.tflite", lambda data: data + b"\0")
    damaged = bundle_path.read_bytes()
    status, _, err = run_cli(capsys, "bundle", "sign", bundle_path, "--key", keys / "dev.key")
    assert status == 2 and "does not match the manifest" in err
    assert bundle_path.read_bytes() == damaged


def test_bundle_create_takes_options_over_what_the_model_says(keys, capsys, tmp_path):
    labels = tmp_path / "digits.txt"
    labels.write_text("\n".join(f"digit {d}" for d in range(10)) + "\n")
    out = tmp_path / "custom.eab"
    status, _, err = run_cli(capsys, "bundle", "create", DEMO_FLOAT_MODEL, "--labels", labels, "--task", "raw",
                             "--resize", "letterbox", "--color", "bgr", "--mean", "127.5", "--std", "127.5",
                             "-o", out)
    assert status == 0, err
    manifest = read_bundle(out).manifest
    assert manifest.task == "raw" and manifest.labels[3] == "digit 3"
    assert manifest.name == "digits_float32" and manifest.version == "unversioned"
    assert (manifest.preprocessing.resize, manifest.preprocessing.color) == ("letterbox", "bgr")
    assert manifest.preprocessing.mean == (127.5,) and manifest.input["dtype"] == "float32"


@pytest.mark.parametrize("model, layout", [
    (DEMO / "digits_detector_int8.tflite", "yolo-v8"),  # the project's trained detector (YOLOv8 layout)
    (MODELS / "face_detection_short_range.tflite", "anchor-ssd"),  # MediaPipe's BlazeFace
    (MODELS / "yolov8_pose_layout.tflite", "yolo-pose"),
    (MODELS / "selfie_segmentation.tflite", "segmentation-foreground"),
])
def test_bundle_create_records_the_task_the_board_decodes(capsys, tmp_path, model, layout):
    """The manifest's task overrides task = "auto" on the board: it must be the layout matcher's, not "raw"."""
    on_board = build_active_model(parse_config({"pipelines": {"p": {"model": str(model), "source": "0"}}}).pipelines[0])
    assert on_board.layout.layout == layout
    out = tmp_path / "model.eab"
    status, stdout, stderr = run_cli(capsys, "bundle", "create", model, "-o", out)
    assert status == 0, stderr
    manifest = read_bundle(out).manifest
    assert manifest.task == on_board.task != "raw" and f", {on_board.task}," in stdout
    from_bundle = build_active_model(parse_config({"pipelines": {"p": {"model": str(out), "source": "0"}}}).pipelines[0])
    assert (from_bundle.task, from_bundle.layout.layout) == (on_board.task, layout)


def test_a_raw_task_guessed_by_an_older_convert_is_guessed_again(capsys, tmp_path):
    """Before `task_option` was recorded, convert guessed "raw" for every layout but classification and SSD."""
    detector = (DEMO / "digits_detector_int8.tflite").read_bytes()
    for info, expected in (({"task": "raw"}, "detection"),  # an older convert's guess
                           ({"task": "raw", "task_option": "raw"}, "raw"),  # convert --task raw: kept
                           ({"task": "detection", "task_option": None}, "detection")):
        model = tmp_path / "detector.tflite"
        model.write_bytes(attach_files(detector, {CONVERSION_INFO_FILE: conversion_info_bytes(info)}))
        status, _, stderr = run_cli(capsys, "bundle", "create", model, "-o", tmp_path / "d.eab")
        assert status == 0, stderr
        assert read_bundle(tmp_path / "d.eab").manifest.task == expected, info


# ---------------------------------------------------------------------------- the device side

def test_trust_rule_on_the_device(bundle_path, keys, caplog):
    dev, other = str(keys / "dev.pub"), str(keys / "other.pub")
    opened = open_model(str(bundle_path), (dev,), allow_unsigned_models=False)
    assert opened.manifest.version == "1.4.2" and "trusted key" in opened.provenance
    assert opened.model_file.content == DEMO_MODEL.read_bytes()
    with pytest.raises(BundleTrustError, match="not trusted here"):
        open_model(str(bundle_path), (other,), allow_unsigned_models=False)
    # allow_unsigned_models = true: an unknown signer is loaded, with a warning
    assert open_model(str(bundle_path), (other,), allow_unsigned_models=True).manifest.name == "digits"
    assert "loading it anyway" in caplog.text
    # a bare .tflite is refused once the device only takes signed bundles
    with pytest.raises(BundleTrustError, match="bare .tflite"):
        open_model(str(DEMO_MODEL), (dev,), allow_unsigned_models=False)
    assert open_model(str(DEMO_MODEL)).manifest is None
    # a signature by a trusted key that does not verify is refused even when unsigned models are allowed
    rewrite_member(bundle_path, "manifest.json", lambda data: data.replace(b'"1.4.2"', b'"1.4.3"'))
    with pytest.raises(BundleTrustError, match="altered after signing"):
        open_model(str(bundle_path), (dev,), allow_unsigned_models=True)


def test_config_trusted_keys_and_the_unsigned_default(tmp_path):
    config = parse_config({"pipelines": {"p": {"model": "m.tflite", "source": "0"}}})
    assert config.trusted_keys == () and config.allow_unsigned_models is True
    config = parse_config({"trusted_keys": ["keys/ci.pub"], "pipelines": {"p": {"model": "m.eab", "source": "0"}}},
                          base_dir=tmp_path)
    assert config.trusted_keys == (str(tmp_path / "keys/ci.pub"),) and config.allow_unsigned_models is False
    config = parse_config({"trusted_keys": ["ci.pub"], "allow_unsigned_models": True,
                           "pipelines": {"p": {"model": "m.eab", "source": "0", "preprocess": {"std": [1]}}}})
    assert config.allow_unsigned_models is True and config.pipelines[0].preprocess_keys == ("std",)


def test_active_model_takes_labels_preprocessing_and_version_from_the_manifest(keys, capsys, tmp_path):
    out = tmp_path / "letterbox.eab"
    assert run_cli(capsys, "bundle", "create", DEMO_MODEL, "--key", keys / "dev.key", "--name", "digits",
                   "--version", "7", "--resize", "letterbox", "--mean", "10", "-o", out)[0] == 0
    config = parse_config({"trusted_keys": [str(keys / "dev.pub")], "pipelines": {
        "p": {"model": str(out), "source": "0", "preprocess": {"mean": [3]}}}})
    active = build_active_model(config.pipelines[0], trusted_keys=config.trusted_keys,
                                allow_unsigned_models=config.allow_unsigned_models)
    assert (active.ref.name, active.ref.version, active.task) == ("digits", "7", "classification")
    assert active.labels == [str(d) for d in range(10)]
    assert active.preprocessor.options.resize == "letterbox"  # from the manifest
    assert active.preprocessor.options.mean == (3.0,)  # the user set it: the config wins


def test_the_agent_runs_a_signed_bundle_and_refuses_an_untrusted_one(bundle_path, keys, agent_process, tmp_path):
    config = write_config(tmp_path / "agent.toml", textwrap.dedent(f"""
        device_id = "board"
        state_dir = "{tmp_path / 'state'}"
        trusted_keys = ["{keys / 'dev.pub'}"]
        [pipelines.digits]
        model = "{bundle_path}"
        source = "{DEMO_VIDEO}"
        max_frames = 50
        sinks = ["stdout"]
    """))
    agent = agent_process("run", "--config", str(config))
    assert agent.wait(60) == 0, agent.stderr
    predictions = [json.loads(line) for line in agent.stdout.splitlines()]
    assert len(predictions) == 50
    assert {p["model"]["version"] for p in predictions} == {"1.4.2"}
    assert {p["model"]["name"] for p in predictions} == {"digits"}
    correct = sum(p["classes"][0]["label"] == DEMO_TRUTH[p["frame"] - 1] for p in predictions)
    assert correct >= 45, f"{correct}/50 correct"

    untrusted = write_config(tmp_path / "untrusted.toml", config.read_text().replace("dev.pub", "other.pub"))
    agent = agent_process("run", "--config", str(untrusted))
    assert agent.wait(60) == 1
    assert "not trusted here" in agent.stderr and agent.stdout == ""


# ---------------------------------------------------------------------------- Edge TPU readiness (no TF)

def test_edgetpu_check_on_real_models(capsys, monkeypatch):
    status, out, _ = run_cli(capsys, "edgetpu-check", DEMO_MODEL, "--json")
    report = json.loads(out)["edgetpu"]
    assert status == 0 and report["fully_mapped"] and report["mapped_to_edgetpu"] == report["operators"] == 8
    status, out, _ = run_cli(capsys, "edgetpu-check", DEMO_FLOAT_MODEL)
    assert status == 0
    assert "first unsupported: CONV_2D (#0)" in out and "float32" in out and "--quantize int8" in out
    monkeypatch.setenv("PATH", "/nonexistent")
    status, out, err = run_cli(capsys, "edgetpu-check", DEMO_MODEL, "--compile")
    assert status == 0 and "edgetpu_compiler is not on the PATH" in err and "coral.ai" in err


def test_edgetpu_check_runs_the_compiler_when_it_is_installed(capsys, monkeypatch, tmp_path):
    """No Edge TPU compiler exists here, so a stand-in script on PATH plays its outermost part: it is
    called like the real one (-s -o DIR MODEL) and writes MODEL_edgetpu.tflite and a log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    compiler = bin_dir / "edgetpu_compiler"
    compiler.write_text(textwrap.dedent("""\
        #!/bin/sh
        [ "$1" = "-s" ] && [ "$2" = "-o" ] || exit 64
        name=$(basename "$4" .tflite)
        cp "$4" "$3/${name}_edgetpu.tflite"
        echo "Operator  Count  Status" > "$3/${name}_edgetpu.log"
        echo "Edge TPU Compiler version 16.0 (stand-in)"
    """))
    compiler.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    status, out, _ = run_cli(capsys, "edgetpu-check", DEMO_MODEL, "--compile", "--json")
    compiled = json.loads(out)["edgetpu"]["compiler"]
    assert status == 0 and compiled["available"] and compiled["returncode"] == 0
    assert "Edge TPU Compiler version 16.0" in compiled["log"] and "Operator  Count  Status" in compiled["log"]


# ---------------------------------------------------------------------------- without TensorFlow

NO_TF_CHILD = textwrap.dedent("""
    import importlib.abc, json, sys
    class NoTensorFlow(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in ("tensorflow", "keras", "tf_keras"):
                raise ImportError(f"{name} is blocked in this test")
    sys.meta_path.insert(0, NoTensorFlow())
    from edge_agent.cli import main
    folder = sys.argv[1]
    statuses = [
        main(["keys", "generate", folder + "/k"]),
        main(["bundle", "create", sys.argv[2], "--key", folder + "/k.key", "-o", folder + "/m.eab"]),
        main(["bundle", "verify", folder + "/m.eab", "--trusted-key", folder + "/k.pub"]),
        main(["edgetpu-check", sys.argv[2]]),
        main(["convert", sys.argv[2], "-o", folder + "/out.tflite"]),
    ]
    loaded = sorted(m for m in sys.modules if m.partition(".")[0] in ("tensorflow", "keras"))
    print(json.dumps({"statuses": statuses, "loaded": loaded}))
""")


def test_keys_bundle_and_edgetpu_check_work_without_tensorflow(tmp_path):
    result = subprocess.run([sys.executable, "-c", NO_TF_CHILD, str(tmp_path), str(DEMO_MODEL)],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["statuses"] == [0, 0, 0, 0, 2], result.stderr
    assert report["loaded"] == []
    assert "pip install 'edge-agent[host]'" in result.stderr
    assert not (tmp_path / "out.tflite").exists()
