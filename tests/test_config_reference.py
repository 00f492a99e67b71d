"""The README's configuration reference is rendered from the schema: a key, default or range
changed in the schema (edge_agent/config/schema.py and the table modules it names) and not in
the README fails here."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields

from support import REPO
from edge_agent.config import AgentConfig, MqttConfig, PipelineConfig
from edge_agent.config.reference import BEGIN, END, readme_reference, render_reference


def test_the_readme_reference_is_what_the_schema_renders():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert readme_reference(readme) == render_reference(), (
        "README.md's configuration reference differs from the schema: run "
        "`.venv/bin/edge-agent config-reference --update README.md`")


def test_the_reference_is_one_block_inside_the_configuration_reference_section():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.index("\n## Configuration reference\n")
    following = readme.index("\n## ", section + 1)
    assert readme.count(BEGIN) == 1 and readme.count(END) == 1
    assert section < readme.index(BEGIN) < readme.index(END) < following


def test_every_key_is_in_the_reference_with_its_table():
    reference = render_reference()
    for cls, prefix in ((AgentConfig, ""), (MqttConfig, "mqtt."), (PipelineConfig, "pipelines.NAME.")):
        for f in fields(cls):
            meta = f.metadata.get("setting")
            if meta is None or not meta.is_key:
                continue
            if f"`[{prefix}{f.name}" in reference:  # a table: its own section, with its keys
                continue
            assert f"| `{prefix}{f.name}` |" in reference, f.name
    for table in ("[spool]", "[models]", "[serial]", "[mqtt.tls]", "[pipelines.NAME.source]", "[pipelines.NAME.delegate]",
                  "[pipelines.NAME.events]", "[pipelines.NAME.zones.ZONE]", "[pipelines.NAME.labels.LABEL]",
                  "[pipelines.NAME.publish]", "[homeassistant]", "[pipelines.NAME.anchors]",
                  "[pipelines.NAME.box_decoder]"):
        assert f"`{table}`" in reference, table
    assert "| `pipelines.NAME.edgetpu_device` |" in reference and "| `trusted_keys` |" in reference


def test_the_hidden_command_prints_the_reference():
    result = subprocess.run([sys.executable, "-m", "edge_agent", "config-reference"], capture_output=True, text=True,
                            cwd=REPO, timeout=60)
    assert result.returncode == 0 and result.stdout == render_reference()
    help_text = subprocess.run([sys.executable, "-m", "edge_agent", "--help"], capture_output=True, text=True,
                               cwd=REPO, timeout=60).stdout
    assert "    run " in help_text and "config-reference" not in help_text  # hidden, like selftest


def reference_tool(*args: str, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_agent.config.reference", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=60)


def test_the_reference_tools_command_line_is_honest(tmp_path):
    """--help, --check and --update (and the older bare FILE) work; a bad file is one line, no traceback."""
    result = reference_tool("--help")
    assert result.returncode == 0 and "--update" in result.stdout and "--check" in result.stdout
    assert reference_tool("--check", "README.md").returncode == 0
    stale = tmp_path / "README.md"
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    stale.write_text(readme.replace("| `pipelines.NAME.labels.LABEL.min_score` |", "| `pipelines.NAME.labels.LABEL.old` |"))
    result = reference_tool("--check", str(stale))
    assert result.returncode == 1 and f"--update {stale}" in result.stderr
    hidden = subprocess.run([sys.executable, "-m", "edge_agent", "config-reference", "--check", str(stale)],
                            capture_output=True, text=True, cwd=REPO, timeout=60)
    assert hidden.returncode == 1  # the CLI's hidden command is the same tool
    result = reference_tool("--update", str(stale))
    assert result.returncode == 0 and "updated" in result.stdout and stale.read_text(encoding="utf-8") == readme
    stale.write_text(readme.replace("| `pipelines.NAME.iou` |", "| `pipelines.NAME.eye_oh_you` |"))
    assert reference_tool(str(stale)).returncode == 0 and stale.read_text(encoding="utf-8") == readme  # older spelling
    (tmp_path / "plain.md").write_text("# no reference here\n")
    for args in (("--check", str(tmp_path / "missing.md")), ("--update", str(tmp_path / "plain.md"))):
        result = reference_tool(*args)
        assert result.returncode == 2 and "Traceback" not in result.stderr and result.stderr.startswith("error: "), args
    assert (tmp_path / "plain.md").read_text() == "# no reference here\n"
