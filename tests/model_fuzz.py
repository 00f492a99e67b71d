"""Byte-mutated copies of a real model, each run by a real `edge-agent run --max-frames 2`.

A copy gets 1-4 changes (seeded), each one byte set to a random or boundary value or one aligned
4-byte word set to a boundary int32 (-1, 0, 1 << 20, ...), always in the model's structure (tables,
vtables, offsets, shapes, indexes): the bytes of weight buffers and of the appended labels zip are left
alone, since a changed weight only changes the answer. Each copy runs in its own agent process, which ends as one of:

  ran      exit 0 and both predictions on stdout
  refused  exit 1 or 2 and the reason in the log ("pipeline main cannot start: ..." or "... failed ...")
  unclear  exited without predictions and without a reason in the log (or with a traceback)
  crashed  killed by a signal (SIGSEGV, SIGABRT, ...)
  hung     still running after the harness's timeout

Manual run (the numbers in the README), about 2 s per copy per core:

    .venv/bin/python tests/model_fuzz.py --count 200 --runtime tflite-runtime --runtime litert --jobs 2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edge_agent.runtime.tflite_file import _FlatBuffer  # noqa: E402 (needs the repository on sys.path)

DEMO = REPO / "edge_agent" / "data" / "demo"
SEED_MODEL = DEMO / "digits_int8.tflite"
VIDEO = DEMO / "digits-demo.avi"
INTERESTING_BYTES = (0x00, 0x01, 0x10, 0x7F, 0x80, 0xFF)  # 0x10 in the third byte of an int32 makes 1 << 20
INTERESTING_WORDS = (-1, 0, 1, 2, 255, 1 << 16, 1 << 20, 1 << 24, 0x7FFFFFFF, -0x80000000)
RUN_TIMEOUT_S = 90.0
SELFTEST_TIMEOUT_S = 15.0
REASON_MARKERS = ("cannot start: ", "no pipeline could start", " failed: ", " stage failed")


@dataclass(frozen=True)
class Outcome:
    name: str
    runtime: str
    kind: str  # ran / refused / unclear / crashed / hung
    detail: str  # the reason from the log, the signal, or the log's tail


def structure_positions(content: bytes) -> list[int]:
    """Byte positions outside weight data and outside the zip appended after the flatbuffer."""
    fb = _FlatBuffer(content)
    excluded = bytearray(len(content))
    flatbuffer_end = 0
    for buffer in fb.tables(fb.root(), 4):  # Model.buffers
        pos = fb._field_pos(buffer, 0)  # Buffer.data
        if pos is None:
            continue
        start = pos + int.from_bytes(content[pos:pos + 4], "little")
        length = int.from_bytes(content[start:start + 4], "little")
        excluded[start + 4:start + 4 + length] = b"\x01" * length
        flatbuffer_end = max(flatbuffer_end, start + 4 + length)
    zip_start = content.find(b"PK\x03\x04", flatbuffer_end)
    end = zip_start if zip_start >= 0 else len(content)
    return [i for i in range(end) if not excluded[i]]


def mutate(content: bytes, seed: int) -> bytes:
    """One mutated copy: 1-4 structure bytes or aligned words replaced by random or boundary values."""
    rng = random.Random(seed)
    positions = structure_positions(content)
    words = sorted({p - p % 4 for p in positions if p - p % 4 + 4 <= len(content)})
    data = bytearray(content)
    for _ in range(rng.randint(1, 4)):
        if rng.random() < 0.5:
            position = rng.choice(positions)
            value = rng.choice(INTERESTING_BYTES) if rng.random() < 0.4 else rng.randrange(256)
            data[position] = value if value != data[position] else value ^ 0xFF
        else:
            position = rng.choice(words)
            data[position:position + 4] = rng.choice(INTERESTING_WORDS).to_bytes(4, "little", signed=True)
    return bytes(data)


def write_mutants(folder: Path, count: int, seed: int, source: Path = SEED_MODEL) -> list[Path]:
    """`count` distinct mutated copies of `source` in `folder`, named by their number."""
    content = source.read_bytes()
    paths, seen = [], {hashlib.sha256(content).digest()}
    attempt = 0
    while len(paths) < count:
        mutant = mutate(content, seed * 1_000_003 + attempt)
        attempt += 1
        digest = hashlib.sha256(mutant).digest()
        if digest in seen:
            continue
        seen.add(digest)
        path = folder / f"mutant-{seed}-{len(paths):04d}.tflite"
        path.write_bytes(mutant)
        paths.append(path)
    return paths


def agent_config(path: Path, models: list[tuple[str, Path]], runtime: str, state_dir: Path,
                 selftest_timeout_s: float = SELFTEST_TIMEOUT_S) -> Path:
    """A config with one pipeline per (name, model), each stopping after two frames of the demo video."""
    tables = "".join(f"""
[pipelines.{name}]
model = "{model}"
source = {{ uri = "{VIDEO}" }}
runtime = "{runtime}"
num_threads = 1
max_frames = 2
sinks = ["stdout"]
""" for name, model in models)
    path.write_text(f"""
device_id = "fuzz"
state_dir = "{state_dir}"
[mqtt]
enabled = false
[models]
selftest_timeout_s = {selftest_timeout_s}
{tables}""")
    return path


def run_model(model: Path, runtime: str, workdir: Path, timeout_s: float = RUN_TIMEOUT_S) -> Outcome:
    """Run one model in its own agent process and classify how it ended."""
    config = agent_config(workdir / f"{model.stem}-{runtime}.toml", [("main", model)], runtime, workdir / "state")
    command = [sys.executable, "-m", "edge_agent", "run", "--config", str(config)]
    try:
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, errors="replace", timeout=timeout_s)
    except subprocess.TimeoutExpired as err:
        tail = (err.stderr or b"")[-300:]
        return Outcome(model.name, runtime, "hung", tail.decode("utf-8", "replace") if isinstance(tail, bytes) else tail)
    return classify(model.name, runtime, result.returncode, result.stdout, result.stderr)


def classify(name: str, runtime: str, returncode: int, stdout: str, stderr: str) -> Outcome:
    if returncode < 0:
        return Outcome(name, runtime, "crashed", signal.Signals(-returncode).name)
    predictions = [line for line in stdout.splitlines() if line.startswith("{")]
    if returncode == 0 and len(predictions) == 2:
        return Outcome(name, runtime, "ran", "")
    reasons = [line for line in stderr.splitlines() if any(marker in line for marker in REASON_MARKERS)]
    if returncode in (1, 2) and reasons and "Traceback" not in stderr:
        return Outcome(name, runtime, "refused", reasons[0][:2000])
    return Outcome(name, runtime, "unclear", f"exit {returncode}, {len(predictions)} predictions: {stderr[-400:]}")


def run_all(models: list[Path], runtimes: list[str], workdir: Path, jobs: int) -> list[Outcome]:
    """Every model on every runtime, `jobs` agent processes at a time."""
    tasks = [(model, runtime) for runtime in runtimes for model in models]
    with ThreadPoolExecutor(jobs) as pool:
        return list(pool.map(lambda task: run_model(task[0], task[1], workdir), tasks))


def summary(outcomes: list[Outcome]) -> dict[str, dict[str, int]]:
    by_runtime: dict[str, Counter] = {}
    for outcome in outcomes:
        by_runtime.setdefault(outcome.runtime, Counter())[outcome.kind] += 1
    return {runtime: dict(counts) for runtime, counts in by_runtime.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=200, help="mutated copies (default 200)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--runtime", action="append", choices=["litert", "tflite-runtime"],
                        help="repeatable (default: both)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="agents at a time")
    parser.add_argument("--keep", type=Path, help="write the copies and logs here instead of a temporary folder")
    parser.add_argument("--json", action="store_true", help="print every outcome as a JSON line")
    args = parser.parse_args()
    runtimes = args.runtime or ["litert", "tflite-runtime"]
    with tempfile.TemporaryDirectory(prefix="model-fuzz-") as temp:
        workdir = args.keep or Path(temp)
        workdir.mkdir(parents=True, exist_ok=True)
        models = write_mutants(workdir, args.count, args.seed)
        started = time.monotonic()
        outcomes = run_all(models, runtimes, workdir, args.jobs)
    for outcome in outcomes:
        if args.json:
            print(json.dumps(outcome.__dict__))
        elif outcome.kind not in ("ran", "refused"):
            print(f"{outcome.kind:8} {outcome.runtime:15} {outcome.name}  {outcome.detail[:200]}")
    print(json.dumps({"count": args.count, "seed": args.seed, "seconds": round(time.monotonic() - started, 1),
                      "outcomes": summary(outcomes)}))
    bad = [o for o in outcomes if o.kind not in ("ran", "refused")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
