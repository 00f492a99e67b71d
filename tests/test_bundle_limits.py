"""Bounded work before trust, and models encrypted at rest, without a broker: zip bombs (a 1.5 MB bundle
whose model inflates to 1.5 GiB, a member that lies about its size, a directory of thousands of entries),
a damaged deflate stream, and the X25519 + HKDF + AES-256-GCM format with the commands that make and
show it (`keys generate-device`, `bundle create --encrypt-for`, `bundle verify`, `inspect`)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import stat
import struct
import time
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import pytest

from support import DEMO_MODEL
from crafted_models import MB, bomb_bundle, deflated_zeros, make_bundle, make_keys
from edge_agent.cli import main
from edge_agent.delivery.bundle import (
    BundleError,
    BundleTrustError,
    bundle_to_bytes,
    read_bundle,
    read_bundle_header,
    sign_manifest,
)
from edge_agent.delivery.device_keys import DeviceKeyError, load_device_private_key, load_device_public_key
from edge_agent.delivery.manifest import manifest_to_bytes
from edge_agent.host.bundling import BundleRequest, create_bundle_bytes
from edge_agent.service.model_source import open_model

BOMB_BYTES = 1536 * MB  # 1.5 GiB of zeros


def run_cli(capsys, *args) -> tuple[int, str, str]:
    status = main([str(a) for a in args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    folder = tmp_path_factory.mktemp("limits")
    keys = make_keys(folder, "dev", "other")
    v1 = make_bundle(folder / "v1.eab", DEMO_MODEL, keys["dev"], "1.0")
    started = time.monotonic()
    stream = deflated_zeros(BOMB_BYTES)
    bomb = bomb_bundle(folder / "bomb.eab", v1, stream, BOMB_BYTES)  # honest about its size
    liar = bomb_bundle(folder / "liar.eab", v1, stream, MB)  # declares 1 MB, inflates to 1.5 GiB
    print(f"bomb: {bomb.stat().st_size / MB:.2f} MB inflating to {BOMB_BYTES / MB:.0f} MB, made in "
          f"{time.monotonic() - started:.1f} s")
    return {"folder": folder, "keys": keys, "v1": v1, "bomb": bomb, "liar": liar}


def peak_mb_while(work) -> tuple[float, object]:
    tracemalloc.start()
    try:
        try:
            result = work()
        except Exception as err:  # the refusal is the result
            result = err
        return tracemalloc.get_traced_memory()[1] / MB, result
    finally:
        tracemalloc.stop()


def test_a_zip_bomb_is_refused_before_a_byte_of_it_is_inflated(made):
    """On a board with trusted keys: the bomb that declares its size is refused on its declared size, the one
    that lies (1 MB) on its missing signature; neither is inflated."""
    trusted = (str(made["folder"] / "dev.pub"),)
    assert 1.0 < made["bomb"].stat().st_size / MB < 2.5, "the bomb is about 1.5 MB"
    for bomb, expected in ((made["bomb"], "declares 1,610,612,736 bytes; at most 52,428,800 are accepted"),
                           (made["liar"], "is not signed")):
        started = time.monotonic()
        peak_mb, error = peak_mb_while(lambda: open_model(str(bomb), trusted, allow_unsigned_models=False,
                                                          max_model_bytes=50 * MB))
        seconds = time.monotonic() - started
        assert isinstance(error, BundleError) and expected in str(error), error
        assert peak_mb < 5, f"refused after {peak_mb:.1f} MB of allocations: the model was not inflated"
        print(f"signed board: {bomb.name} refused in {seconds * 1000:.0f} ms, {peak_mb:.2f} MB allocated at most")


def test_a_bomb_on_a_board_that_takes_unsigned_models_is_still_bounded(made):
    """allow_unsigned_models = true: no signature to stop it, so the declared sizes and models.max_mb do.
    The liar's stream is read only up to the 1 MB it declares, and that data fails its check."""
    peak_mb, error = peak_mb_while(lambda: open_model(str(made["bomb"]), (), allow_unsigned_models=True,
                                                      max_model_bytes=50 * MB))
    assert isinstance(error, BundleError) and "at most 52,428,800 are accepted" in str(error), error
    assert peak_mb < 5
    started = time.monotonic()
    peak_mb, error = peak_mb_while(lambda: open_model(str(made["liar"]), (), allow_unsigned_models=True,
                                                      max_model_bytes=50 * MB))
    seconds = time.monotonic() - started
    assert isinstance(error, BundleError) and "model.tflite" in str(error), error
    assert "is damaged" in str(error) or "does not match the manifest" in str(error), error
    assert peak_mb < 8, f"{peak_mb:.1f} MB"
    print(f"unsigned board: the lying bomb refused in {seconds * 1000:.0f} ms, {peak_mb:.2f} MB allocated at most")


def test_a_directory_of_thousands_of_entries_is_refused_before_zipfile_reads_it(made):
    crowded = io.BytesIO()
    with zipfile.ZipFile(crowded, "w") as archive:
        for n in range(5000):
            archive.writestr(f"m{n}", b"")
    with pytest.raises(BundleError, match="lists 5000 members"):
        read_bundle_header(crowded.getvalue(), "crowded.eab")


def test_a_damaged_compressed_stream_names_the_member_and_what_to_do(made, tmp_path):
    bundle = read_bundle(made["v1"])
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("manifest.json", bundle.manifest_bytes)
        archive.writestr(zipfile.ZipInfo("model.tflite"), bundle.model, compress_type=zipfile.ZIP_DEFLATED)
        archive.writestr("manifest.sig", bundle.signature.to_bytes())
    data = bytearray(buffer.getvalue())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        info = archive.getinfo("model.tflite")
    start = info.header_offset + 30 + len(b"model.tflite")
    for offset in range(start + 10, start + 200):
        data[offset] ^= 0x55
    damaged = tmp_path / "damaged.eab"
    damaged.write_bytes(bytes(data))
    with pytest.raises(BundleError) as refused:
        read_bundle(damaged)
    message = str(refused.value)
    assert "the member model.tflite (deflated" in message and "is damaged" in message
    assert "copy it again, or rebuild it with `edge-agent bundle create`" in message
    assert "Error -3" in message or "CRC" in message


# ---------------------------------------------------------------------------- encryption at rest

@pytest.fixture(scope="module")
def boards(made, tmp_path_factory):
    folder = tmp_path_factory.mktemp("boards")
    for name in ("kitchen", "garage", "stranger"):
        assert main(["keys", "generate-device", str(folder / name)]) == 0
    return folder


def test_keys_generate_device_writes_an_x25519_pair_and_refuses_to_overwrite(boards, capsys):
    private = boards / "kitchen.key"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert load_device_private_key(private).key_id == load_device_public_key(boards / "kitchen.pub").key_id
    status, _, err = run_cli(capsys, "keys", "generate-device", boards / "kitchen")
    assert status == 2 and "already exists" in err
    make_keys(boards, "signer")
    with pytest.raises(DeviceKeyError, match="not a device \\(X25519\\) key"):
        load_device_public_key(boards / "signer.pub")
    with pytest.raises(DeviceKeyError, match="not a device \\(X25519\\) key"):
        load_device_private_key(boards / "signer.key")


def test_an_encrypted_bundle_opens_only_on_the_boards_it_was_made_for(made, boards, tmp_path):
    recipients = [load_device_public_key(boards / f"{name}.pub") for name in ("kitchen", "garage")]
    content, manifest, _ = create_bundle_bytes(BundleRequest(DEMO_MODEL, "digits", "3.0"), made["keys"]["dev"], recipients)
    path = tmp_path / "secret.eab"
    path.write_bytes(content)
    plain = DEMO_MODEL.read_bytes()
    assert plain not in content and plain[1000:1064] not in content, "the model is not in the bundle in the clear"
    with zipfile.ZipFile(path) as archive:
        assert sorted(archive.namelist()) == ["manifest.json", "manifest.sig", "model.tflite.enc"]
    trusted = (str(made["folder"] / "dev.pub"),)
    for name in ("kitchen", "garage"):
        opened = open_model(str(path), trusted, False, device_key=str(boards / f"{name}.key"))
        assert opened.model_file.content == plain and "decrypted in memory with device key" in opened.provenance
        assert opened.model_file.sha256 == manifest.model_sha256
    with pytest.raises(BundleError, match=r"encrypted for kitchen \(.*\), garage \(.*\), not for this board's device key"):
        open_model(str(path), trusted, False, device_key=str(boards / "stranger.key"))
    with pytest.raises(BundleError, match="this board has no device key: set \\[models\\] device_key"):
        open_model(str(path), trusted, False)


def test_an_altered_ciphertext_is_refused_before_and_by_decryption(made, boards, tmp_path):
    recipients = [load_device_public_key(boards / "kitchen.pub")]
    content, manifest, _ = create_bundle_bytes(BundleRequest(DEMO_MODEL, "digits", "3.0"), None, recipients)
    bundle = read_bundle_header(content, "x")
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        ciphertext = bytearray(archive.read("model.tflite.enc"))
    ciphertext[100] ^= 1
    altered = tmp_path / "altered.eab"
    altered.write_bytes(bundle_to_bytes(bundle.manifest_bytes, bytes(ciphertext), None, encrypted=True))
    key = str(boards / "kitchen.key")
    with pytest.raises(BundleError, match="the encrypted model does not match the manifest"):
        open_model(str(altered), (), True, device_key=key)
    # a manifest rewritten to match the altered bytes (possible only unsigned): the AEAD tag catches it
    encryption = dataclasses.replace(manifest.encryption, ciphertext_sha256=hashlib.sha256(ciphertext).hexdigest())
    forged = manifest_to_bytes(dataclasses.replace(manifest, encryption=encryption))
    altered.write_bytes(bundle_to_bytes(forged, bytes(ciphertext), None, encrypted=True))
    with pytest.raises(BundleError, match="does not decrypt \\(authentication failed"):
        open_model(str(altered), (), True, device_key=key)


def test_the_commands_make_and_show_encrypted_bundles(made, boards, capsys, tmp_path):
    out = tmp_path / "enc.eab"
    status, stdout, err = run_cli(capsys, "bundle", "create", DEMO_MODEL, "--key", made["folder"] / "dev.key",
                                  "--version", "3.1", "--encrypt-for", boards / "kitchen.pub",
                                  "--encrypt-for", boards / "garage.pub", "-o", out)
    assert status == 0, err
    assert "encrypted for kitchen (" in stdout and "garage (" in stdout
    status, stdout, err = run_cli(capsys, "bundle", "verify", out, "--trusted-key", made["folder"] / "dev.pub")
    assert status == 0, err
    assert "encrypted for kitchen" in stdout and "its ciphertext matches the manifest" in stdout
    status, stdout, _ = run_cli(capsys, "bundle", "verify", out, "--trusted-key", made["folder"] / "dev.pub", "--json")
    assert [r["name"] for r in json.loads(stdout)["encrypted_for"]] == ["kitchen", "garage"]
    status, stdout, _ = run_cli(capsys, "inspect", out)
    assert status == 0 and "encrypted for kitchen" in stdout and "--device-key" in stdout
    status, stdout, _ = run_cli(capsys, "inspect", out, "--device-key", boards / "kitchen.key")
    assert status == 0 and "encrypted for kitchen" in stdout and "operators" in stdout
    status, _, err = run_cli(capsys, "inspect", out, "--device-key", boards / "stranger.key")
    assert status == 2 and "not for this board's device key" in err
    status, _, err = run_cli(capsys, "bundle", "create", DEMO_MODEL, "--encrypt-for", made["folder"] / "dev.pub",
                             "-o", tmp_path / "wrong.eab")
    assert status == 2 and "not a device (X25519) key" in err and not (tmp_path / "wrong.eab").exists()
    signed_again = tmp_path / "resigned.eab"
    status, _, err = run_cli(capsys, "bundle", "sign", out, "--key", made["folder"] / "other.key", "-o", signed_again)
    assert status == 0, err
    assert open_model(str(signed_again), (str(made["folder"] / "other.pub"),), False,
                      device_key=str(boards / "garage.key")).model_file.content == DEMO_MODEL.read_bytes()


def test_a_device_key_can_come_from_a_systemd_credential(boards, monkeypatch):
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(boards))
    assert load_device_private_key("credential:kitchen.key").key_id == load_device_public_key(boards / "kitchen.pub").key_id
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    with pytest.raises(DeviceKeyError, match="CREDENTIALS_DIRECTORY is not set"):
        load_device_private_key("credential:kitchen.key")
