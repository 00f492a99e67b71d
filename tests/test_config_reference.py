"""The README's configuration reference is rendered from the schema: a key, default or range
changed in edge_agent/config/schema.py and not in the README fails here."""

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
