"""``dataset.json``: what ``bigtrain prepare`` wrote, read back and checked before training starts.

The manifest is the contract between preparing data and training on it: resolution, channels and
classes come from here, so a preset trains on a user's own shards with no other change, and every
shard it lists must exist (a missing one stops the run at start-up with one line naming it).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bigtrain.errors import DatasetError

MANIFEST_NAME = "dataset.json"
MANIFEST_VERSION = 1


@dataclass
class ShardInfo:
    file: str
    count: int
    sha256: str


@dataclass
class DatasetManifest:
    root: Path
    name: str
    resolution: int
    channels: int
    classes: list[str]
    splits: dict[str, list[ShardInfo]]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """``images`` (``bigtrain prepare``) or ``tokens`` (``bigtrain tokenize``)."""
        return str(self.extra.get("kind", "images"))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def count(self, split: str) -> int:
        return sum(s.count for s in self.splits.get(split, []))

    @property
    def dataset_id(self) -> str:
        """A short content id: changes whenever any shard's bytes change (used to key caches)."""
        h = hashlib.sha256()
        for split in sorted(self.splits):
            for s in self.splits[split]:
                h.update(f"{split}/{s.file}/{s.sha256}".encode())
        return h.hexdigest()[:16]

    def shard_paths(self, split: str) -> list[str]:
        """Absolute shard paths of ``split``; raises DatasetError if the split is empty or a file is gone."""
        if split not in self.splits or not self.splits[split]:
            raise DatasetError(
                f"dataset {self.root} has no '{split}' shards (splits: {', '.join(self.splits)})"
            )
        paths = []
        for s in self.splits[split]:
            p = self.root / s.file
            if not p.is_file():
                raise DatasetError(f"shard missing: {p} (listed in {self.root / MANIFEST_NAME})")
            paths.append(str(p))
        return paths

    def to_json(self) -> dict[str, Any]:
        return {
            "version": MANIFEST_VERSION,
            "name": self.name,
            "resolution": self.resolution,
            "channels": self.channels,
            "classes": self.classes,
            "num_classes": self.num_classes,
            "splits": {
                k: {"count": sum(s.count for s in v), "shards": [vars(s) for s in v]}
                for k, v in self.splits.items()
            },
            **self.extra,
        }

    def write(self) -> Path:
        path = self.root / MANIFEST_NAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, root: str | Path) -> DatasetManifest:
        root = Path(root).expanduser()
        path = root / MANIFEST_NAME
        if not root.is_dir():
            raise DatasetError(
                f"dataset folder not found: {root} (make it with: bigtrain prepare SRC {root})"
            )
        if not path.is_file():
            raise DatasetError(f"no {MANIFEST_NAME} in {root} (make it with: bigtrain prepare SRC {root})")
        try:
            raw = json.loads(path.read_text())
            splits = {k: [ShardInfo(**s) for s in v["shards"]] for k, v in raw["splits"].items()}
            known = {"version", "name", "resolution", "channels", "classes", "num_classes", "splits"}
            return cls(
                root=root,
                name=str(raw["name"]),
                resolution=int(raw["resolution"]),
                channels=int(raw["channels"]),
                classes=[str(c) for c in raw["classes"]],
                splits=splits,
                extra={k: v for k, v in raw.items() if k not in known},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f"unreadable {path}: {type(exc).__name__}: {exc}") from exc
