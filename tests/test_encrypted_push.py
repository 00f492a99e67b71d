"""Models encrypted at rest, end to end with real agents: a bundle encrypted for one board is pushed to it,
decrypted in memory (the self-test child gets it through its stdin pipe), served, kept in the store as
ciphertext only, and decrypted again after a restart; a board without that device key refuses it; the
one-line trial takes `--device-key`."""

from __future__ import annotations

import hashlib
import signal

from support import DEMO_FLOAT_MODEL, DEMO_MODEL, DEMO_VIDEO, wait_until
from crafted_models import make_bundle, make_keys
from edge_agent.cli import main
from edge_agent.delivery.device_keys import load_device_public_key
from edge_agent.host.bundling import BundleRequest, create_bundle_bytes
from push_support import agent_config, predictions, push, wait_serving

INT8_SHA = hashlib.sha256(DEMO_MODEL.read_bytes()).hexdigest()
FLOAT_SHA = hashlib.sha256(DEMO_FLOAT_MODEL.read_bytes()).hexdigest()


def files_holding(folder, needle: bytes) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_an_encrypted_push_is_served_from_memory_and_stored_as_ciphertext(tmp_path, session_broker, collect,
                                                                          agent_process):
    keys = make_keys(tmp_path, "dev")
    assert main(["keys", "generate-device", str(tmp_path / "vault")]) == 0
    assert main(["keys", "generate-device", str(tmp_path / "elsewhere")]) == 0
    v1 = make_bundle(tmp_path / "v1.eab", DEMO_MODEL, keys["dev"], "1.0")
    content, manifest, _ = create_bundle_bytes(BundleRequest(DEMO_FLOAT_MODEL, "digits", "2.0"), keys["dev"],
                                               [load_device_public_key(tmp_path / "vault.pub")])
    secret = tmp_path / "secret-2.0.eab"
    secret.write_bytes(content)
    plain = DEMO_FLOAT_MODEL.read_bytes()
    needle = plain[len(plain) // 2: len(plain) // 2 + 256]  # a stretch of the model's weights

    collector = collect(session_broker, ["edge/vault/#", "edge/keyless/#"])
    config = agent_config(tmp_path / "vault.toml", session_broker, "vault", v1, [tmp_path / "dev.pub"],
                          models=f'device_key = "{tmp_path / "vault.key"}"')
    agent = agent_process("run", "--config", str(config))
    keyless = agent_process("run", "--config", str(agent_config(tmp_path / "keyless.toml", session_broker, "keyless",
                                                                v1, [tmp_path / "dev.pub"])))
    wait_serving(collector, "vault", INT8_SHA)
    wait_serving(collector, "keyless", INT8_SHA)

    (result,) = push(session_broker, secret, ["vault"], key=keys["dev"])
    assert result.result == "activated", result
    assert result.new == {"name": "digits", "version": "2.0", "sha256": manifest.model_sha256}
    wait_serving(collector, "vault", FLOAT_SHA)
    assert "decrypted in memory with device key" in agent.stderr
    state = tmp_path / "vault-state"
    stored = list((state / "models" / "cam").glob("*.eab"))
    assert any(p.read_bytes() == content for p in stored), "the store holds the bundle as pushed: ciphertext"
    assert files_holding(tmp_path, needle) == [], "no file anywhere holds the model in the clear"

    (result,) = push(session_broker, secret, ["keyless"], key=keys["dev"])
    assert result.result == "rejected" and "is encrypted for vault (" in result.reason
    assert "this board has no device key" in result.reason
    wait_serving(collector, "keyless", INT8_SHA)

    agent.signal(signal.SIGTERM)
    assert agent.wait(20) == 0, agent.stderr
    agent = agent_process("run", "--config", str(config))  # the stored ciphertext is decrypted again at start
    wait_serving(collector, "vault", FLOAT_SHA)
    assert wait_until(lambda: "from the model store" in agent.stderr, 5)

    # a board whose device key is not a recipient: refused with whom it was made for
    trial = agent_process("run", "--model", str(secret), "--source", str(DEMO_VIDEO), "--no-mqtt", "--max-frames", "3",
                          "--trusted-key", str(tmp_path / "dev.pub"), "--device-key", str(tmp_path / "elsewhere.key"),
                          "--state-dir", str(tmp_path / "trial-state"))
    assert trial.wait(60) != 0 and "not for this board's device key" in trial.stderr
    trial = agent_process("run", "--model", str(secret), "--source", str(DEMO_VIDEO), "--no-mqtt", "--max-frames", "3",
                          "--trusted-key", str(tmp_path / "dev.pub"), "--device-key", str(tmp_path / "vault.key"),
                          "--state-dir", str(tmp_path / "trial-state"))
    assert trial.wait(60) == 0, trial.stderr
    assert trial.stdout.count(FLOAT_SHA) == 3
    assert files_holding(tmp_path, needle) == []
    assert predictions(collector, "vault")
