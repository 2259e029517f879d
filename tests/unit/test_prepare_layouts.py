"""`bigtrain prepare --pairs` and `--domains`, and the built-ins made from the digits: samples with a
source and a target matched by name, domains in shards of their own with their own splits, and
the same bytes for any number of workers or SLURM array parts."""

from __future__ import annotations

import hashlib
import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from bigtrain.cli.main import main as bigtrain_main
from bigtrain.data import digits
from bigtrain.data.builtin import BuiltinDataset, load_builtin
from bigtrain.data.manifest import DatasetError, DatasetManifest
from bigtrain.data.prepare import (
    Domains,
    Pairs,
    PrepareOptions,
    list_source,
    merge,
    plan_digest,
    plan_shards,
    prepare,
)


def _opts(**kw: object) -> PrepareOptions:
    base = {"resolution": 16, "val_fraction": 0.2, "samples_per_shard": 3, "progress": False}
    return PrepareOptions(**{**base, **kw})  # type: ignore[arg-type]


def _solid(path: Path, value: int, size: tuple[int, int] = (20, 24)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value, value)).save(path)


def _pair_folders(root: Path) -> tuple[Path, Path]:
    """Targets in 2 class folders, a solid grey each (value 10 * i); the source of target i has
    value 250 - 10 * i and is a JPEG where the target is a PNG. Plus one target without a source
    and one source without a target."""
    src, tgt = root / "src", root / "tgt"
    for i in range(10):
        cls = f"c{i % 2}"
        _solid(tgt / cls / f"im{i}.png", 10 * i)
        _solid(src / cls / f"im{i}.jpg", 250 - 10 * i)
        if i == 3:
            (tgt / cls / f"im{i}.txt").write_text("number three\n")
    _solid(tgt / "c0" / "lonely.png", 7)
    _solid(src / "c1" / "orphan.png", 9)
    return src, tgt


def _samples(folder: Path) -> list[dict[str, object]]:
    urls = [{"url": str(p)} for p in sorted(folder.glob("*.tar"))]
    return list(wds.tarfile_samples(urls))


def _mean(data: object) -> float:
    assert isinstance(data, bytes)
    return float(np.asarray(Image.open(io.BytesIO(data))).mean())


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_pairs_are_matched_by_path_without_suffix(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src, tgt = _pair_folders(tmp_path)
    with caplog.at_level(logging.WARNING):
        m = prepare(Pairs(str(src), str(tgt)), tmp_path / "out", _opts())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert (
        len(warnings) == 1 and "1 of 11 targets have no source and 1 of 11 sources no target" in warnings[0]
    )
    assert "c0/lonely.png" in warnings[0]
    assert m.layout == "pairs" and m.source_channels == 3 and m.classes == ["c0", "c1"]
    assert m.count("train") + m.count("val") == 10 and m.count("val") == 2
    raw = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert raw["layout"] == "pairs" and raw["source"] == [str(src), str(tgt)] and raw["captions"] is True
    samples = _samples(tmp_path / "out")
    assert len(samples) == 10
    for s in samples:
        assert {"src.png", "tgt.png", "cls"} <= set(s) and "png" not in s
        value = _mean(s["tgt.png"])
        i = int(round(value / 10))
        assert value == pytest.approx(10 * i, abs=1)
        assert _mean(s["src.png"]) == pytest.approx(250 - 10 * i, abs=3)  # the JPEG of the same name
        assert int(s["cls"]) == i % 2  # type: ignore[call-overload]
        assert (s.get("txt") == b"number three") == (i == 3)
        assert Image.open(io.BytesIO(s["src.png"])).size == (16, 16)  # type: ignore[arg-type]


def test_pairs_take_captions_by_the_targets_path(tmp_path: Path) -> None:
    src, tgt = _pair_folders(tmp_path)
    table = tmp_path / "captions.jsonl"
    table.write_text('{"file": "c1/im5.png", "caption": "fifty"}\n')
    prepare(Pairs(str(src), str(tgt)), tmp_path / "out", _opts(captions=str(table)))
    texts = {_mean(s["tgt.png"]) // 10: s.get("txt") for s in _samples(tmp_path / "out")}
    assert texts[5] == b"fifty" and texts[3] is None  # --captions replaces the sidecars


def test_pairs_need_matching_names_and_two_folders(tmp_path: Path) -> None:
    src, tgt = tmp_path / "src", tmp_path / "tgt"
    _solid(tgt / "a.png", 1)
    _solid(src / "b.png", 2)
    with pytest.raises(DatasetError, match=r"no image of .*tgt has a source of the same path without suffix"):
        prepare(Pairs(str(src), str(tgt)), tmp_path / "out", _opts())
    _solid(src / "a.jpg", 3)
    _solid(src / "a.webp", 3)
    with pytest.raises(DatasetError, match=r"two images named a \(a.jpg, a.webp\)"):
        prepare(Pairs(str(src), str(tgt)), tmp_path / "out", _opts())
    with pytest.raises(DatasetError, match="source folder not found"):
        prepare(Pairs(str(tmp_path / "nope"), str(tgt)), tmp_path / "out", _opts())
    with pytest.raises(DatasetError, match="are the same"):
        prepare(Pairs(str(tgt), str(tgt)), tmp_path / "out", _opts())


def test_the_plan_digest_covers_the_source_files(tmp_path: Path) -> None:
    src, tgt = _pair_folders(tmp_path)
    pairs = Pairs(str(src), str(tgt))
    before = plan_digest(plan_shards(list_source(pairs, _opts()).samples, _opts()))
    (src / "c1" / "im5.jpg").rename(src / "c1" / "im5.png")
    assert plan_digest(plan_shards(list_source(pairs, _opts()).samples, _opts())) != before


def _domain_folders(root: Path, n_a: int = 11, n_b: int = 7, classes: bool = False) -> tuple[Path, Path]:
    """Domain A: dark images (value < 100), domain B: bright ones (> 150), distinct values."""
    a, b = root / "horses", root / "zebras"
    for i in range(n_a):
        _solid(a / (f"k{i % 2}/" if classes else "") / f"x{i:02d}.png", 5 * i)
    for i in range(n_b):
        _solid(b / (f"k{i % 3}/" if classes else "") / f"x{i:02d}.png", 160 + 5 * i)
    return a, b


def test_domains_have_their_own_splits_and_shards(tmp_path: Path) -> None:
    a, b = _domain_folders(tmp_path)
    m = prepare(Domains((str(a), str(b))), tmp_path / "out", _opts(val_fraction=0.3))
    assert m.layout == "domains" and m.domains == ["A", "B"] and m.name == "horses+zebras"
    # 11 A: 3 val, 8 train; 7 B: 2 val, 5 train; shards of 3, train before val, A before B
    assert [s.file for s in m.splits["train"]] == [
        "train-A-000000.tar", "train-A-000001.tar", "train-A-000002.tar", "train-B-000000.tar", "train-B-000001.tar",
    ]  # fmt: skip
    assert [s.file for s in m.splits["val"]] == ["val-A-000000.tar", "val-B-000000.tar"]
    assert (m.count("train", "A"), m.count("val", "A"), m.count("train", "B"), m.count("val", "B")) == (
        8,
        3,
        5,
        2,
    )
    keys: list[str] = []
    for split in ("train", "val"):
        for domain in ("A", "B"):
            for path in m.shard_paths(split, domain):
                assert Path(path).name.startswith(f"{split}-{domain}-")
                samples = list(wds.tarfile_samples([{"url": path}]))
                means = [_mean(s["png"]) for s in samples]
                assert all((v < 100) == (domain == "A") for v in means)  # never a mixed shard
                keys += [str(s["__key__"]) for s in samples]
    assert len(keys) == len(set(keys)) == 18
    assert len(m.shard_paths("train")) == 5
    with pytest.raises(DatasetError, match=r"no 'train' shards of domain 'C' \(domains: A, B\)"):
        m.shard_paths("train", "C")
    raw = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert raw["splits"]["val"]["shards"][1]["domain"] == "B" and raw["source"] == [str(a), str(b)]
    assert DatasetManifest.load(tmp_path / "out").splits["val"][1].domain == "B"


def test_each_domain_split_is_seeded(tmp_path: Path) -> None:
    a, b = _domain_folders(tmp_path, n_a=20, n_b=20)

    def val_keys(seed: int, out: str) -> set[str]:
        m = prepare(Domains((str(a), str(b))), tmp_path / out, _opts(seed=seed, samples_per_shard=100))
        return {str(s["__key__"]) for p in m.shard_paths("val") for s in wds.tarfile_samples([{"url": p}])}

    first = val_keys(0, "s0")
    assert first == val_keys(0, "again") and first != val_keys(1, "s1")
    assert len(first) == 8 and len({k for k in first if int(k) < 20}) == 4  # 4 of A's 20, 4 of B's


def test_domains_with_class_folders_share_one_class_list(tmp_path: Path) -> None:
    a, b = _domain_folders(tmp_path, classes=True)
    m = prepare(Domains((str(a), str(b))), tmp_path / "out", _opts())
    assert m.classes == ["k0", "k1", "k2"] and m.label_key == "cls"
    flat = tmp_path / "flat"
    _solid(flat / "one.png", 3)
    with pytest.raises(DatasetError, match="has no class folders but another domain has"):
        prepare(Domains((str(a), str(flat))), tmp_path / "bad", _opts())
    with pytest.raises(DatasetError, match="--captions cannot tell"):
        prepare(Domains((str(a), str(b))), tmp_path / "bad", _opts(captions=str(tmp_path)))


@pytest.mark.parametrize("layout", ["pairs", "domains"])
def test_workers_and_array_parts_write_the_same_bytes(tmp_path: Path, layout: str) -> None:
    if layout == "pairs":
        src, tgt = _pair_folders(tmp_path)
        (tgt / "c1" / "im7.png").write_bytes(b"\x89PNG broken")  # an unreadable target skips its pair
        what: Pairs | Domains = Pairs(str(src), str(tgt))
    else:
        what = Domains(tuple(str(p) for p in _domain_folders(tmp_path)))
    one = prepare(what, tmp_path / "w1", _opts(workers=1, format="webp"))
    prepare(what, tmp_path / "w2", _opts(workers=2, format="webp"))
    assert _digests(tmp_path / "w1") == _digests(tmp_path / "w2")
    assert one.extra["skipped"] == (1 if layout == "pairs" else 0)
    for i in range(3):
        prepare(what, tmp_path / "parts", _opts(shard_range=(i, 3), format="webp"))
    merge(tmp_path / "parts")
    assert _digests(tmp_path / "parts") == _digests(tmp_path / "w1")


def test_plain_folders_keep_their_manifest_keys(tmp_path: Path) -> None:
    a, _ = _domain_folders(tmp_path)
    prepare(str(a), tmp_path / "out", _opts())
    text = (tmp_path / "out" / "dataset.json").read_text()
    assert '"domain"' not in text and '"layout"' not in text and '"source_channels"' not in text
    assert DatasetManifest.load(tmp_path / "out").layout == "images"


def test_cli_pairs_and_domains(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        bigtrain_main(["prepare", "--help"])
    assert exc.value.code == 0
    help_text = capsys.readouterr().out
    assert "--pairs SRC_DIR TGT_DIR" in help_text and "--domains A_DIR B_DIR" in help_text
    src, tgt = _pair_folders(tmp_path)
    common = ["--resolution", "16", "--samples-per-shard", "4", "--no-progress"]
    assert bigtrain_main(["prepare", "--pairs", str(src), str(tgt), str(tmp_path / "p"), *common]) == 0
    assert "layout pairs" in capsys.readouterr().out
    assert DatasetManifest.load(tmp_path / "p").layout == "pairs"
    a, b = _domain_folders(tmp_path)
    assert bigtrain_main(["prepare", "--domains", str(a), str(b), str(tmp_path / "d"), *common]) == 0
    assert "train: 16 images (10 A + 6 B)" in capsys.readouterr().out
    for argv, message in [
        (["--pairs", str(src), str(tgt)], "takes exactly one more argument, OUT"),
        (["--pairs", str(src), str(tgt), "x", "y"], "takes exactly one more argument, OUT"),
        (["--pairs", str(src), str(tgt), "--domains", str(a), str(b), "x"], "exclude each other"),
    ]:
        with pytest.raises(SystemExit):
            bigtrain_main(["prepare", *argv, *common])
        assert message in capsys.readouterr().err


# ------------------------------------------------------------------------------------- built-ins


@pytest.fixture(scope="module")
def base() -> BuiltinDataset:
    return load_builtin("mnist5k")


def test_builtin_edges_pairs_each_digit_with_its_outline(base: BuiltinDataset) -> None:
    ds = load_builtin("mnist5k-edges")
    assert ds.layout == "pairs" and len(ds) == 5000 and ds.sources is not None
    assert np.array_equal(ds.images, base.images) and np.array_equal(ds.labels, base.labels)
    assert np.array_equal(ds.sources[::97], digits.outline(base.images[::97]))


def test_builtin_domains_split_the_digits_into_disjoint_halves(base: BuiltinDataset) -> None:
    ds = load_builtin("mnist5k-domains")
    is_a = np.array([d == "A" for d in ds.domains])
    assert ds.layout == "domains" and len(ds) == 5000 and is_a.sum() == 2500 and is_a[:2500].all()
    a, b = ds.images[is_a], ds.images[~is_a]
    assert a.mean(axis=(1, 2)).max() < 127 < b.mean(axis=(1, 2)).min()  # B: white background
    # which digits each half holds: A as they are, B thickened and inverted; no digit in both
    plain = {img.tobytes(): i for i, img in enumerate(base.images)}
    changed = {img.tobytes(): i for i, img in enumerate(digits.thick_inverted(base.images))}
    from_a = [plain[img.tobytes()] for img in a]
    from_b = [changed[img.tobytes()] for img in b]
    assert sorted(from_a + from_b) == list(range(5000))
    assert np.array_equal(ds.labels[is_a], base.labels[from_a])
    thick = digits.measure(255 - b[::10]).thickness
    assert np.median(thick) > 1.3 * np.median(digits.measure(a[::10]).thickness)


def test_builtin_captions_describe_each_digit() -> None:
    ds = load_builtin("mnist5k-captions")
    assert ds.layout == "images" and len(ds.captions) == 5000
    recorded = ds.extra["attributes"]
    attrs = digits.measure(ds.images)
    t = digits.Thresholds.tertiles(attrs)
    assert recorded["thickness"]["thresholds"] == list(t.thickness) and recorded["measured_at"] == 28
    for i in range(0, 5000, 13):
        label, words = digits.parse_caption(ds.captions[i])
        assert label == ds.labels[i]
        expected = {k: v for k, v in digits.attribute_words(attrs[i], t).items() if v is not None}
        assert words == expected


@pytest.mark.slow  # seconds: 5,000 digits each
@pytest.mark.parametrize("name", ["mnist5k-edges", "mnist5k-domains", "mnist5k-captions"])
def test_builtins_prepare_at_32(tmp_path: Path, name: str) -> None:
    m = prepare(f"builtin:{name}", tmp_path, PrepareOptions(resolution=32, progress=False))
    assert (m.count("train"), m.count("val"), m.resolution, m.channels) == (4500, 500, 32, 1)
    samples = _samples(tmp_path)
    if name == "mnist5k-edges":
        assert m.layout == "pairs" and all({"src.png", "tgt.png", "cls"} <= set(s) for s in samples)
    elif name == "mnist5k-domains":
        assert m.layout == "domains" and [m.count("val", d) for d in m.domains] == [250, 250]
        for d, dark in (("A", True), ("B", False)):
            shard = m.shard_paths("train", d)[0]
            means = [_mean(s["png"]) for s in wds.tarfile_samples([{"url": shard}])]
            assert all((v < 127) == dark for v in means)
    else:
        assert m.has_text and "attributes" in m.extra
        for s in samples[:200]:
            assert digits.parse_caption(s["txt"].decode())[0] == int(s["cls"])  # type: ignore[attr-defined, call-overload]
