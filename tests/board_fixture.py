"""Board fixture trees (tests/board_fixtures/NAME/root) made usable: copied to a temp folder, with
the device nodes git cannot hold created from NAME/nodes.txt and the demo model installed where
deploy/install.sh puts it."""

from __future__ import annotations

import grp
import os
import shutil
from pathlib import Path

FIXTURES = Path(__file__).parent / "board_fixtures"
DEMO = Path(__file__).resolve().parent.parent / "edge_agent" / "data" / "demo"


def fixture_gid(root: Path, group: str) -> int:
    for line in (root / "etc/group").read_text().splitlines():
        parts = line.split(":")
        if parts[0] == group:
            return int(parts[2])
    return grp.getgrnam(group).gr_gid


def materialise(name: str, destination: Path) -> Path:
    """A writable copy of fixture `name`; returns its root. Node ownership needs root (chown)."""
    root = destination / name
    shutil.copytree(FIXTURES / name / "root", root, symlinks=True)
    for line in (FIXTURES / name / "nodes.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        path, kind, mode, group = line.split()
        node = root / path
        node.parent.mkdir(parents=True, exist_ok=True)
        if kind == "fifo":
            os.mkfifo(node)
        else:
            node.write_bytes(b"")
        os.chmod(node, int(mode, 8))
        if os.geteuid() == 0:
            os.chown(node, 0, fixture_gid(root, group))
    models = root / "opt/edge-agent/models/demo"
    models.mkdir(parents=True)
    for file in DEMO.iterdir():
        if file.is_file():
            shutil.copy2(file, models / file.name)
    return root
