"""``dataset.json``: what ``bigtrain prepare`` wrote (or ``bigtrain index`` found), read back and
checked before training starts.

The manifest is the contract between preparing data and training on it: resolution, channels and
classes come from here, so a preset trains on a user's own shards with no other change, and every
shard it lists must exist (a missing one stops the run at start-up with one line naming it).

A sample holds one image, or several parts: its ``layout`` (``extra["layout"]``) says which.

* ``images`` (also when absent): ``<key>.<png|jpg|jpeg|webp>``, the image;
* ``pairs``: ``<key>.src.<fmt>`` (the source, what a translation model is given) and
  ``<key>.tgt.<fmt>`` (the target, what it should make), pixel-aligned. Readers that want one image
  (FID references, ``bigtrain index``) take the target (:func:`bigtrain.data.images.image_key`);
* ``domains``: one image per sample as for ``images``, but every shard holds a single domain
  (``train-A-000000.tar``, ``train-B-000000.tar``, ...; ``ShardInfo.domain``), and
  ``extra["domains"]`` lists them: the two unpaired sets of a CycleGAN, streamed one domain each.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bigtrain.data.urls import is_url
from bigtrain.errors import DatasetError

MANIFEST_NAME = "dataset.json"
MANIFEST_VERSION = 1
LAYOUTS = ("images", "pairs", "domains")


@dataclass
class ShardInfo:
    """One shard: ``file`` is relative to the manifest's folder (shards ``prepare`` wrote) or a
    location as ``bigtrain index`` was given it (an absolute path, ``http(s)://``, ``s3://`` or
    ``pipe:`` URL; see :mod:`bigtrain.data.urls`)."""

    file: str
    count: int
    sha256: str  # "" when not computed (remote shards indexed without --digests)
    bytes: int = 0  # 0: not recorded (manifests written before the field existed)
    ext: str = ""  # its samples' image format (png, jpg, jpeg, webp); "" for token shards
    domain: str = ""  # layout "domains": the one domain its samples belong to ("" otherwise)

    def to_json(self) -> dict[str, Any]:
        """Its fields, without ``domain`` when empty: dataset.json files of other layouts keep
        their bytes."""
        data = dict(vars(self))
        if not self.domain:
            del data["domain"]
        return data


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
    def layout(self) -> str:
        """What a sample holds: ``images``, ``pairs`` or ``domains`` (see the module docstring)."""
        return str(self.extra.get("layout", "images"))

    @property
    def domains(self) -> list[str]:
        """A ``domains`` dataset's domain names, in order (``["A", "B"]``); empty for other layouts."""
        return [str(d) for d in self.extra.get("domains", [])]

    @property
    def source_channels(self) -> int:
        """A ``pairs`` dataset's source channels (the targets' are ``channels``)."""
        return int(self.extra.get("source_channels", self.channels))

    @property
    def label_key(self) -> str | None:
        """Where a sample's class is: ``cls`` (its ``.cls`` text), ``json:FIELD`` (a field of its
        ``.json``) or None (unlabelled: every sample is class 0)."""
        value = self.extra.get("label_key", "cls" if self.classes else None)
        return str(value) if value else None

    @property
    def label_names(self) -> tuple[str, ...]:
        """The class list to look labels up in, when samples carry class *names* (``bigtrain
        index`` found non-integer labels); empty when they carry indices, as ``prepare``'s ``.cls``
        do (its classes are folder names, which may themselves be numbers: "1", "2", ...)."""
        return tuple(self.classes) if self.extra.get("label_names") else ()

    @property
    def has_text(self) -> bool:
        """Samples carry ``.txt`` captions (``batch["text"]``)."""
        return bool(self.extra.get("captions", False))

    @property
    def has_meta(self) -> bool:
        """Samples carry ``.json`` metadata (``batch["meta"]``)."""
        return bool(self.extra.get("metadata", False))

    @property
    def resized_on_read(self) -> bool:
        """Its images are not all stored at ``resolution``: shards found by ``bigtrain index``, or
        prepared with ``--resize shorter``. The stream resizes them, so how (``data.resample``,
        ``data.resize``) changes the images, and the FID references with them."""
        return bool(self.extra.get("indexed")) or self.extra.get("resize") == "shorter"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def shards(self, split: str, domain: str | None = None) -> list[ShardInfo]:
        """The shards of ``split``, of one ``domain`` only when given (empty lists when none)."""
        found = self.splits.get(split, [])
        return found if domain is None else [s for s in found if s.domain == domain]

    def count(self, split: str, domain: str | None = None) -> int:
        return sum(s.count for s in self.shards(split, domain))

    def domain_view(self, domain: str) -> DatasetManifest:
        """One domain of a ``domains`` dataset as a dataset of its own (named ``<name>-<domain>``,
        only that domain's shards, layout ``images``): what FID references and a domain's stream
        read. Its ``dataset_id`` differs from the other domain's, so caches never mix them."""
        if domain not in self.domains:
            raise DatasetError(
                f"dataset {self.root} has no domain '{domain}' (domains: {', '.join(self.domains)})"
            )
        splits = {k: [s for s in v if s.domain == domain] for k, v in self.splits.items()}
        extra = {k: v for k, v in self.extra.items() if k not in ("layout", "domains")}
        return DatasetManifest(
            self.root, f"{self.name}-{domain}", self.resolution, self.channels, list(self.classes),
            {k: v for k, v in splits.items() if v}, extra,
        )  # fmt: skip

    @property
    def dataset_id(self) -> str:
        """A short content id: changes whenever any shard's bytes change (used to key caches)."""
        h = hashlib.sha256()
        for split in sorted(self.splits):
            for s in self.splits[split]:
                # a remote shard indexed without digests is known by its location, size and count
                digest = s.sha256 or f"{s.bytes}:{s.count}"
                h.update(f"{split}/{s.file}/{digest}".encode())
        return h.hexdigest()[:16]

    def location(self, shard: ShardInfo) -> str:
        """Where ``shard`` is read from: a URL as indexed, or a path (relative ones from the root)."""
        if is_url(shard.file) or Path(shard.file).is_absolute():
            return shard.file
        return str(self.root / shard.file)

    def shard_paths(self, split: str, domain: str | None = None) -> list[str]:
        """Shard locations of ``split`` (of one ``domain`` when given, else all of them); raises
        DatasetError if there are none or a local file is gone (remote shards are checked as they
        are read: a start-up check of thousands of URLs would cost minutes)."""
        if split not in self.splits or not self.splits[split]:
            raise DatasetError(
                f"dataset {self.root} has no '{split}' shards (splits: {', '.join(self.splits)})"
            )
        shards = self.shards(split, domain)
        if not shards:
            present = sorted({s.domain for s in self.splits[split] if s.domain})
            raise DatasetError(
                f"dataset {self.root} has no '{split}' shards of domain '{domain}' "
                f"(domains: {', '.join(present) or 'none, its layout is ' + self.layout})"
            )
        paths = []
        for s in shards:
            loc = self.location(s)
            if not is_url(loc) and not Path(loc).is_file():
                raise DatasetError(f"shard missing: {loc} (listed in {self.root / MANIFEST_NAME})")
            paths.append(loc)
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
                k: {"count": sum(s.count for s in v), "shards": [s.to_json() for s in v]}
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
