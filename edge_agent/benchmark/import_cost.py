"""What each heavy import costs the daemon in resident memory and time:

    python -m edge_agent.benchmark.import_cost [MODULE ...]

Imports the modules one after another in a fresh interpreter, in the order the daemon meets
them, and prints VmRSS after each (the increase is what that import added on top of the ones
before it) with the time it took. `cryptography` comes last: the daemon imports it only when it
opens a bundle. For a per-module breakdown of the time, use `python -X importtime`.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import time

DAEMON_ORDER = (
    "numpy",
    "cv2",
    "paho.mqtt.client",
    "ai_edge_litert.interpreter",
    "sqlite3",
    "serial",
    "edge_agent.service.agent",
    "cryptography.hazmat.primitives.asymmetric.ed25519",
)


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def measure(modules: list[str]) -> list[tuple[str, float, float, float]]:
    """(module, RSS after it in MB, MB it added, ms it took) in import order, in this process."""
    rows = []
    before = _rss_mb()
    rows.append(("(python itself)", before, 0.0, 0.0))
    for name in modules:
        started = time.perf_counter()
        try:
            importlib.import_module(name)
        except ImportError as err:
            rows.append((f"{name} (not installed: {err})", before, 0.0, 0.0))
            continue
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        after = _rss_mb()
        rows.append((name, after, after - before, elapsed_ms))
        before = after
    return rows


def main(argv: list[str] | None = None) -> int:
    modules = list(argv if argv is not None else sys.argv[1:]) or list(DAEMON_ORDER)
    if "--in-child" not in modules:
        # a fresh interpreter running this file as a script: `-m` would import the
        # edge_agent.benchmark package first, and with it numpy, before anything is measured
        return subprocess.call([sys.executable, "-I", __file__, "--in-child", *modules])
    modules.remove("--in-child")
    print(f"{'import':52}  {'VmRSS':>8}  {'added':>8}  {'time':>7}")
    for name, rss, added, elapsed_ms in measure(modules):
        print(f"{name:52}  {rss:6.1f} MB  {added:+6.1f} MB  {elapsed_ms:5.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
