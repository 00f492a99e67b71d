"""The workstation's commands: convert, keys, bundle, edgetpu-check (push and models are in
cli/delivery.py). Each command's arguments are in its `add_<command>` function.

Only `convert` needs TensorFlow (imported when it runs); the others work on a board too.
Errors end as one line on stderr and an exit status: 2 for bad input (including a bundle
that fails verification), 1 for a converted model that fails the accuracy gate.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edge_agent.cli import EXIT_FAILED, EXIT_OK, fail
from edge_agent.config import COLOR_ORDERS, RESIZE_MODES, TASKS

QUANTIZE_MODES = ("none", "float16", "dynamic", "int8")
IO_TYPES = ("uint8", "int8", "float32")


def register(commands: argparse._SubParsersAction) -> None:
    add_convert(commands)
    add_keys(commands)
    add_bundle(commands)
    add_edgetpu_check(commands)


def add_preprocess_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """--resize, --color, --mean, --std (what a pipeline's [preprocess] sets); None when not given unless `defaults`."""
    group = parser.add_argument_group("preprocessing (what the agent does to each frame; value = (pixel - mean) / std)")
    group.add_argument("--resize", choices=RESIZE_MODES, default="stretch" if defaults else None)
    group.add_argument("--color", choices=COLOR_ORDERS, default="rgb" if defaults else None,
                       help="channel order the model expects (default rgb)")
    group.add_argument("--mean", type=_numbers, default=(0.0,) if defaults else None, metavar="M[,M,M]",
                       help="1 or 3 numbers (default 0)")
    group.add_argument("--std", type=_numbers, default=(255.0,) if defaults else None, metavar="S[,S,S]",
                       help="1 or 3 numbers, not 0 (default 255: pixels scaled to 0..1)")


def _numbers(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 1 or 3 comma-separated numbers, got {text!r}") from None
    if len(values) not in (1, 3):
        raise argparse.ArgumentTypeError(f"expected 1 or 3 numbers, got {len(values)}")
    return values


# ---------------------------------------------------------------------------- convert

def add_convert(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "convert", help="convert a SavedModel/.keras/.h5/frozen graph/ONNX model to TFLite, prune, validate, check "
                        "Edge TPU readiness (needs edge-agent[host])",
        description="Convert a SavedModel folder, .keras or .h5 file, TF1 frozen graph .pb or .onnx file to .tflite; "
                    "optionally prune it, validate it against the original and gate on accuracy. Needs TensorFlow: "
                    "pip install 'edge-agent[host]'.",
    )
    parser.add_argument("source", type=Path, metavar="SRC",
                        help="SavedModel folder, .keras, .h5, TF1 frozen graph .pb or .onnx file")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUT", help="the .tflite to write")
    parser.add_argument("--quantize", choices=QUANTIZE_MODES, default="none",
                        help="none: float32; float16: float16 weights; dynamic: int8 weights; int8: full integer "
                             "(needs --calibration)")
    parser.add_argument("--io-type", choices=IO_TYPES, default="uint8",
                        help="int8 only: type of the model's inputs and outputs (default uint8)")
    parser.add_argument("--calibration", type=Path, metavar="DATA",
                        help="int8: representative data: a folder of images, a .npy file, or a video clip "
                             "(any file OpenCV reads; frames picked evenly)")
    parser.add_argument("--calibration-limit", type=int, default=300, metavar="N",
                        help="use at most N calibration samples, evenly spread (default 300)")
    parser.add_argument("--signature", help="SavedModel signature to convert (when it has several)")
    graph = parser.add_argument_group("frozen graphs and ONNX (toco's names and syntax)")
    graph.add_argument("--input-arrays", metavar="NAME[,NAME...]", help="frozen graph: the input nodes (':0' accepted)")
    graph.add_argument("--output-arrays", metavar="NAME[,NAME...]", help="frozen graph: the output nodes")
    graph.add_argument("--input-shapes", metavar="1,224,224,3[:1,...]",
                       help="one shape per input, ':' apart: fixes sizes the model leaves open (ONNX: in its own "
                            "layout, e.g. 1,3,224,224)")
    prune = parser.add_argument_group("pruning (Keras sources, tensorflow-model-optimization)")
    prune.add_argument("--prune", type=float, metavar="SPARSITY",
                       help="set this fraction of the weights to zero (0 < SPARSITY < 1) by magnitude pruning")
    prune.add_argument("--fine-tune", type=Path, metavar="DATA",
                       help="labelled training data for pruning, in the --validate formats")
    prune.add_argument("--fine-tune-epochs", type=int, default=5, metavar="N",
                       help="epochs of fine-tuning while pruning (default 5)")
    parser.add_argument("--labels", type=Path, help="labels file (one per line), stored in the model")
    parser.add_argument("--task", choices=TASKS, help="what the outputs mean (default: guessed from them)")
    add_preprocess_options(parser, defaults=True)
    check = parser.add_argument_group("validation")
    check.add_argument("--validate", type=Path, metavar="DATA",
                       help="classification: folder of images in one sub-folder per label, or .npz with x (and y); "
                            "detection: a YOLO dataset folder (images/, labels/) or a COCO .json file, as `evaluate` takes")
    check.add_argument("--max-accuracy-drop", type=float, metavar="D",
                       help="fail (exit 1, nothing written) when accuracy drops by more than D (0.01 = 1 point)")
    check.add_argument("--max-map-drop", type=float, metavar="D",
                       help="detection: fail (exit 1, nothing written) when mAP@0.5 or mAP@0.5:0.95 drops by more than D")
    check.add_argument("--report-json", type=Path, metavar="FILE", help="write the report as JSON (for CI)")
    check.add_argument("--threads", type=int, default=0, help="interpreter threads for the latency (default: all cores)")
    parser.add_argument("--edgetpu", action="store_true",
                        help="also run edgetpu_compiler (if installed) and write OUT_edgetpu.tflite")
    parser.set_defaults(handler=_convert_command)


def _convert_command(args: argparse.Namespace) -> int:
    from edge_agent.host.progress import ProgressBar
    from edge_agent.host.report import format_summary, write_report_json
    from edge_agent.host.frozen_graph import parse_array_names, parse_input_shapes
    from edge_agent.host.workflow import AccuracyGateError, ConvertRequest, HOST_INPUT_ERRORS, run_convert

    # a malformed --input-arrays/--input-shapes raises SourceModelError: main prints it, exit 2
    request = ConvertRequest(
        source=args.source, output=args.output, quantize=args.quantize, io_type=args.io_type,
        calibration=args.calibration, calibration_limit=args.calibration_limit, signature=args.signature,
        labels=args.labels, task=args.task, resize=args.resize, color=args.color, mean=args.mean, std=args.std,
        validate=args.validate, max_accuracy_drop=args.max_accuracy_drop, max_map_drop=args.max_map_drop,
        threads=args.threads,
        edgetpu=args.edgetpu, input_arrays=parse_array_names(args.input_arrays),
        output_arrays=parse_array_names(args.output_arrays), input_shapes=parse_input_shapes(args.input_shapes),
        prune=args.prune, fine_tune=args.fine_tune, fine_tune_epochs=args.fine_tune_epochs,
    )
    try:
        report = run_convert(request, progress=ProgressBar)
    except AccuracyGateError as err:
        if args.report_json:
            write_report_json(args.report_json, err.report)
        print(format_summary(err.report), file=sys.stderr)
        return fail(str(err), EXIT_FAILED)
    except HOST_INPUT_ERRORS as err:
        return fail(str(err))
    print(format_summary(report))
    if args.report_json:
        write_report_json(args.report_json, report)
    return EXIT_OK


# ---------------------------------------------------------------------------- keys

def add_keys(commands: argparse._SubParsersAction) -> None:
    keys = commands.add_parser("keys", help="signing keys for bundles and requests; device keys for encrypted models")
    actions = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    generate = actions.add_parser("generate", help="a signing key pair (Ed25519): NAME.key (private, mode 0600) and "
                                                   "NAME.pub (public, for the boards' trusted_keys)")
    generate.add_argument("name", type=Path, metavar="NAME")
    generate.add_argument("--force", action="store_true", help="replace an existing key pair")
    generate.set_defaults(handler=_keys_generate_command)
    device = actions.add_parser("generate-device", help="a board's key pair for encrypted models (X25519): NAME.key "
                                                        "(private, mode 0600, for that board only) and NAME.pub "
                                                        "(for bundle create --encrypt-for)")
    device.add_argument("name", type=Path, metavar="NAME")
    device.add_argument("--force", action="store_true", help="replace an existing key pair")
    device.set_defaults(handler=_keys_generate_device_command)


def _keys_generate_command(args: argparse.Namespace) -> int:
    from edge_agent.delivery.keys import generate_key_pair, load_public_key

    try:
        private_path, public_path = generate_key_pair(args.name, overwrite=args.force)
    except OSError as err:  # the key files cannot be written where the user asked (our errors end in main)
        return fail(str(err))
    key_id = load_public_key(public_path).key_id
    print(f"wrote {private_path} (private, mode 0600: keep it secret) and {public_path} (key id {key_id}: "
          "list it in the board's trusted_keys)")
    return EXIT_OK


def _keys_generate_device_command(args: argparse.Namespace) -> int:
    from edge_agent.delivery.device_keys import generate_device_key_pair, load_device_public_key

    try:
        private_path, public_path = generate_device_key_pair(args.name, overwrite=args.force)
    except OSError as err:
        return fail(str(err))
    key_id = load_device_public_key(public_path).key_id
    print(f"wrote {private_path} (the board's private key, mode 0600: install it on that board only, owned by the "
          f"service user, e.g. `install -o edge-agent -g edge-agent -m 0600 {private_path} /etc/edge-agent/device.key`, "
          f"or as a systemd credential) and {public_path} (device key id {key_id}: "
          f"`bundle create ... --encrypt-for {public_path}`)")
    return EXIT_OK


# ---------------------------------------------------------------------------- bundle

def add_bundle(commands: argparse._SubParsersAction) -> None:
    bundle = commands.add_parser("bundle", help="create, sign and verify model bundles (.eab)")
    actions = bundle.add_subparsers(dest="bundle_command", metavar="ACTION", required=True)

    create = actions.add_parser("create", help="pack a .tflite, its manifest and a signature into one file")
    create.add_argument("model", type=Path, metavar="MODEL.tflite")
    create.add_argument("-o", "--output", type=Path, required=True, metavar="OUT", help="the bundle to write (.eab)")
    create.add_argument("--key", type=Path, help="private key to sign with (NAME.key); without it the bundle is unsigned")
    create.add_argument("--labels", type=Path, help="labels file (default: the labels stored in the model)")
    create.add_argument("--task", choices=TASKS, help="default: what convert recorded, else guessed from the outputs")
    create.add_argument("--name", help="model name (default: the file name)")
    create.add_argument("--version", help="model version, reported with every prediction; boards refuse an older "
                                          "version than the one they run (numbers compare as numbers: 1.10 > 1.9)")
    create.add_argument("--encrypt-for", type=Path, action="append", default=[], metavar="BOARD.pub",
                        help="encrypt the model for this board's device key (keys generate-device); repeat for "
                             "several boards: only they can load it")
    add_preprocess_options(create, defaults=False)
    create.set_defaults(handler=_bundle_create_command)

    sign = actions.add_parser("sign", help="sign (or re-sign) a bundle")
    sign.add_argument("bundle", type=Path, metavar="BUNDLE")
    sign.add_argument("--key", type=Path, required=True, help="private key (NAME.key)")
    sign.add_argument("-o", "--output", type=Path, metavar="OUT", help="write here instead of replacing BUNDLE")
    sign.set_defaults(handler=_bundle_sign_command)

    verify = actions.add_parser("verify", help="check a bundle is intact and signed by a trusted key (exit 0 only then)")
    verify.add_argument("bundle", type=Path, metavar="BUNDLE")
    verify.add_argument("--trusted-key", type=Path, action="append", default=[], required=True, metavar="NAME.pub",
                        help="a trusted public key (repeat for several)")
    verify.add_argument("--json", action="store_true", help="print the manifest and the verdict as JSON")
    verify.set_defaults(handler=_bundle_verify_command)


def _bundle_create_command(args: argparse.Namespace) -> int:
    from edge_agent.atomic_file import write_file_atomically
    from edge_agent.host.bundling import BundleRequest, create_bundle_bytes
    from edge_agent.delivery.device_keys import load_device_public_key
    from edge_agent.delivery.keys import load_private_key

    overrides = {k: v for k, v in (("resize", args.resize), ("color", args.color), ("mean", args.mean),
                                   ("std", args.std)) if v is not None}
    request = BundleRequest(args.model, args.name or "", args.version or "", args.task or "", args.labels, overrides)
    try:
        key = load_private_key(args.key) if args.key else None
        recipients = [load_device_public_key(path) for path in args.encrypt_for]
        content, manifest, signature = create_bundle_bytes(request, key, recipients)
        write_file_atomically(args.output, content)
    except OSError as err:  # a file the user named cannot be read or written
        return fail(str(err))
    signed = f"signed by key {signature.key_id}" if signature else "UNSIGNED (sign it with `edge-agent bundle sign`)"
    encrypted = f", encrypted for {manifest.encryption.describe_recipients()}" if manifest.encryption else ""
    print(f"wrote {args.output}: {manifest.name} {manifest.version}, {manifest.task}, "
          f"model sha256 {manifest.model_sha256[:16]}…, {signed}{encrypted}")
    return EXIT_OK


def _bundle_sign_command(args: argparse.Namespace) -> int:
    from edge_agent.atomic_file import write_file_atomically
    from edge_agent.host.bundling import resign_bundle_bytes
    from edge_agent.delivery.bundle import read_bundle
    from edge_agent.delivery.keys import load_private_key

    output = args.output or args.bundle
    try:
        key = load_private_key(args.key)
        bundle = read_bundle(args.bundle)
        content, signature = resign_bundle_bytes(bundle, key)
        write_file_atomically(output, content)
    except OSError as err:  # a file the user named cannot be read or written
        return fail(str(err))
    print(f"wrote {output}: {bundle.manifest.name} {bundle.manifest.version} signed by key {signature.key_id}")
    return EXIT_OK


def _bundle_verify_command(args: argparse.Namespace) -> int:
    from edge_agent.delivery.bundle import check_trust, read_bundle
    from edge_agent.delivery.keys import load_public_key

    keys = [load_public_key(path) for path in args.trusted_key]
    bundle = read_bundle(args.bundle)
    key = check_trust(bundle, keys)  # BundleError, SigningKeyError: exit 2, in main
    manifest = bundle.manifest
    encryption = manifest.encryption
    if args.json:
        print(json.dumps({"ok": True, "signed_by": key.key_id, "key_file": key.source, "manifest": manifest.to_dict(),
                          "encrypted_for": [{"name": r.name, "key_id": r.key_id} for r in encryption.recipients]
                          if encryption else None}))
    else:
        encrypted = (f"; encrypted for {encryption.describe_recipients()} (the model itself was not decrypted: "
                     "its ciphertext matches the manifest)" if encryption else "")
        print(f"{args.bundle}: OK -- {manifest.name} {manifest.version} ({manifest.task}), model sha256 "
              f"{manifest.model_sha256[:16]}…, signed by trusted key {key.key_id} ({key.source}){encrypted}")
    return EXIT_OK


# ---------------------------------------------------------------------------- edgetpu-check

def add_edgetpu_check(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("edgetpu-check", help="which operators of a .tflite the Edge TPU compiler can map")
    parser.add_argument("model", type=Path, metavar="MODEL.tflite")
    parser.add_argument("--compile", action="store_true", help="also run edgetpu_compiler, if installed, and show its log")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=_edgetpu_check_command)


def _edgetpu_check_command(args: argparse.Namespace) -> int:
    from edge_agent.host.edgetpu import COMPILER_HELP, analyse_readiness, format_readiness, run_compiler, find_compiler
    from edge_agent.runtime.tflite_file import read_model_file

    model_file = read_model_file(args.model)  # ModelFileError: exit 2, in main
    readiness = analyse_readiness(model_file.content, str(args.model))
    result = {"model": str(args.model), "edgetpu": readiness.to_dict()}
    if args.compile:
        if find_compiler() is None:
            result["edgetpu"]["compiler"] = {"available": False, "message": COMPILER_HELP}
        else:
            run = run_compiler(model_file.content, args.model.stem)
            result["edgetpu"]["compiler"] = {"available": True, "returncode": run.returncode, "log": run.log}
    if args.json:
        print(json.dumps(result, indent=2))
        return EXIT_OK
    print(format_readiness(readiness))
    compiler = result["edgetpu"].get("compiler")
    if compiler is not None:
        print(compiler.get("log") or compiler["message"], file=sys.stdout if compiler["available"] else sys.stderr)
    return EXIT_OK
