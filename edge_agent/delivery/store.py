"""The model store of one pipeline: the models pushed to it, which one is active, and what came before.

Layout, under `{state_dir}/models/{pipeline}/`:

  {file_sha256}.eab | .tflite   each model file, named by the SHA-256 of its bytes
  active.json                   {"format": 2, "base_model": PATH, "history": [ENTRY, ...],
                                 "retired": [ENTRY, ...]}

`history` is newest first: history[0] is the active model, history[1] the one a rollback
restores. `retired` holds the models rollbacks gave up, most recent first: a rollback never
deletes the model it leaves; it stays in the store (and in `models list`) until `keep` evicts it.
At most `keep` model files are kept: the newest of `history` first, then the newest retired
ones (format 1, without `retired`, is still read). An ENTRY is {"file", "sha256" (the model's, as predictions report it), "name",
"version", "activated_at" (UTC ISO 8601), "origin" (the transfer id, or "config")}.
`base_model` is the config's `model` when the history began: the agent uses the store only
while the config still names that file, so editing `model` in the config wins.

Power-cut safety: a model file is complete and fsync'ed before active.json names it, and
active.json is replaced with write-temp + fsync + rename, so it always names either the old or
the new model, both whole. Files are deleted only after the rename, and never the active one
or the rollback target. No paho, no runtime here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from edge_agent.atomic_file import fsync_folder, write_file_atomically
from edge_agent.errors import EdgeAgentError

logger = logging.getLogger(__name__)

ACTIVE_FILE = "active.json"
STORE_FORMAT = 2
MIN_KEPT = 2  # the active model and the rollback target


class StoreError(EdgeAgentError):
    """The store cannot do what was asked (nothing to roll back to, damaged active.json, disk refuses)."""


@dataclass(frozen=True)
class StoredModel:
    file: str
    sha256: str
    name: str
    version: str
    activated_at: str = ""
    origin: str = ""

    def describe(self) -> dict:
        return {"name": self.name, "version": self.version, "sha256": self.sha256}


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class ModelStore:
    """One pipeline's folder of models and its active.json."""

    def __init__(self, folder: Path, keep: int = 3):
        self.folder = Path(folder)
        self.keep = max(keep, MIN_KEPT)

    @property
    def active_path(self) -> Path:
        return self.folder / ACTIVE_FILE

    def path(self, model: StoredModel) -> Path:
        return self.folder / model.file

    def _read(self) -> dict:
        try:
            data = json.loads(self.active_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"format": STORE_FORMAT, "base_model": "", "history": [], "retired": []}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise StoreError(f"{self.active_path} cannot be read ({err}): move it aside to start the store afresh") from None
        try:
            history = [StoredModel(**entry) for entry in data["history"]]
            retired = [StoredModel(**entry) for entry in data.get("retired", [])]
            return {"format": data.get("format", STORE_FORMAT), "base_model": str(data.get("base_model", "")),
                    "history": history, "retired": retired}
        except (KeyError, TypeError) as err:
            raise StoreError(f"{self.active_path} is not a model store record ({err}): move it aside") from None

    def history(self) -> list[StoredModel]:
        """Newest first; [] when nothing was ever pushed."""
        return self._read()["history"]

    def base_model(self) -> str:
        return self._read()["base_model"]

    def active(self) -> StoredModel | None:
        history = self.history()
        return history[0] if history else None

    def active_for(self, config_model: str) -> StoredModel | None:
        """The active model, while the config still names the model this store's history began with."""
        record = self._read()
        if not record["history"] or record["base_model"] != config_model:
            return None
        return record["history"][0]

    def retired(self) -> list[StoredModel]:
        """The models rollbacks gave up and the store still holds, most recently given up first."""
        return self._read()["retired"]

    def begin_history(self, config_model: str, model: StoredModel) -> None:
        """Start a new history whose only entry is `model` (the config's model, copied into the store)."""
        self._write(config_model, [model], [])

    def add_file(self, source: Path) -> str:
        """Move a complete, fsync'ed file (on the same file system) into the store; its store name."""
        name = _file_name(_sha256_of_file(source), _suffix_of(source))
        self.folder.mkdir(parents=True, exist_ok=True)
        os.replace(source, self.folder / name)
        fsync_folder(self.folder)
        return name

    def add_bytes(self, content: bytes) -> str:
        """Write a model into the store (atomically); its store name."""
        from edge_agent.delivery.bundle import is_bundle_bytes  # see _suffix_of

        name = _file_name(hashlib.sha256(content).hexdigest(), ".eab" if is_bundle_bytes(content) else ".tflite")
        self.folder.mkdir(parents=True, exist_ok=True)
        if not (self.folder / name).exists():
            write_file_atomically(self.folder / name, content)
        return name

    def contains(self, file_sha256: str) -> StoredModel | None:
        return next((m for m in self.history() if m.file.startswith(file_sha256)), None)

    def activate(self, model: StoredModel, base_model: str) -> None:
        """Record `model` as active (the previous active becomes the rollback target), then prune."""
        record = self._read()
        history = [model] + [m for m in record["history"] if m.file != model.file]
        retired = [m for m in record["retired"] if m.file != model.file]
        self._write(base_model or record["base_model"], history, retired)

    def rollback(self) -> tuple[StoredModel, StoredModel]:
        """Make the previous model active again; (the model given up, the model restored). The model
        given up stays in the store (retired) until `keep` evicts it."""
        record = self._read()
        history = record["history"]
        if len(history) < 2:
            raise StoreError("nothing to roll back to: this pipeline has no previous model in its store")
        retired = [history[0]] + [m for m in record["retired"] if m.file != history[0].file]
        self._write(record["base_model"], history[1:], retired)
        return history[0], history[1]

    def _write(self, base_model: str, history: list[StoredModel], retired: list[StoredModel]) -> None:
        if not self.path(history[0]).is_file():
            raise StoreError(f"{self.path(history[0])} is missing: add the model file to the store before recording it")
        kept = history[: self.keep]
        kept_files = {m.file for m in kept}
        kept_retired = [m for m in retired if m.file not in kept_files][: max(0, self.keep - len(kept))]
        data = {"format": STORE_FORMAT, "base_model": base_model, "history": [asdict(m) for m in kept],
                "retired": [asdict(m) for m in kept_retired]}
        self.folder.mkdir(parents=True, exist_ok=True)
        write_file_atomically(self.active_path, (json.dumps(data, indent=2) + "\n").encode("utf-8"))
        self._prune(kept_files | {m.file for m in kept_retired})

    def _prune(self, referenced: set[str]) -> None:
        """Delete model files active.json no longer names (only after it was replaced)."""
        for path in self.folder.iterdir():
            if path.name == ACTIVE_FILE or path.name in referenced or path.name.startswith("."):
                continue
            if path.suffix in (".eab", ".tflite"):
                try:
                    path.unlink()
                    logger.info("model store %s: removed %s (no longer among the %d kept)", self.folder, path.name, self.keep)
                except OSError as err:
                    logger.warning("model store %s: cannot remove %s: %s", self.folder, path.name, err.strerror)


def pipeline_store(state_dir: str | Path, pipeline: str, keep: int = 3) -> ModelStore:
    return ModelStore(Path(state_dir) / "models" / pipeline, keep)


def list_stores(state_dir: str | Path) -> dict[str, list[StoredModel]]:
    """Every pipeline's history under state_dir/models (for `edge-agent models list`)."""
    root = Path(state_dir) / "models"
    if not root.is_dir():
        return {}
    return {folder.name: ModelStore(folder).history() for folder in sorted(root.iterdir())
            if (folder / ACTIVE_FILE).is_file()}



def _file_name(sha256: str, suffix: str) -> str:
    return f"{sha256}{suffix}"


def _suffix_of(path: Path) -> str:
    # imported here: bundle.py brings `cryptography` (~11 MB), which the daemon loads only when
    # a model enters the store, not at every start (the store itself is imported at start)
    from edge_agent.delivery.bundle import is_bundle_file

    return ".eab" if is_bundle_file(path) else ".tflite"


def _sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def describe_stores(state_dir: str | Path) -> dict[str, list[dict]]:
    """What `models list` shows (and a board's `listed` event carries): per pipeline, each stored
    model with its role: "active", "previous" (newest first: what rollbacks go back to) or "retired"."""
    root = Path(state_dir) / "models"
    if not root.is_dir():
        return {}
    described = {}
    for folder in sorted(root.iterdir()):
        if not (folder / ACTIVE_FILE).is_file():
            continue
        store = ModelStore(folder)
        history, retired = store.history(), store.retired()
        described[folder.name] = ([dict(asdict(m), role="active" if i == 0 else "previous") for i, m in enumerate(history)]
                                  + [dict(asdict(m), role="retired") for m in retired])
    return described
