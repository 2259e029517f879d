"""`bigtrain prepare --workers N` and `--shard-range i/n` + `--merge`: the same bytes whatever the
number of processes or SLURM array tasks, and a merge that refuses incomplete or mismatched parts."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from bigtrain.cli.main import main as bigtrain_main
from bigtrain.data.manifest import DatasetError, DatasetManifest
from bigtrain.data.prepare import PrepareOptions, merge, prepare


def _folder(root: Path, n: int = 23) -> Path:
    """``n`` distinct small photos-like images in 3 classes (some JPEG, some with captions)."""
    rng = np.random.default_rng(0)
    src = root / "src"
    for i in range(n):
        d = src / f"class{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        arr = rng.integers(0, 256, (20 + i % 5, 24 + i % 7, 3), dtype=np.uint8)
        if i % 2:
            Image.fromarray(arr).save(d / f"img{i:03d}.jpg", quality=90)
        else:
            Image.fromarray(arr).save(d / f"img{i:03d}.png")
        if i % 4 == 0:
            (d / f"img{i:03d}.txt").write_text(f"image number {i}")
    return src


def _opts(**kw: object) -> PrepareOptions:
    base = {"resolution": 16, "val_fraction": 0.2, "samples_per_shard": 4, "progress": False}
    return PrepareOptions(**{**base, **kw})  # type: ignore[arg-type]


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_any_number_of_workers_writes_the_same_bytes(tmp_path: Path) -> None:
    src = _folder(tmp_path)
    (src / "class1" / "broken.png").write_bytes(b"\x89PNG not really")
    outs = []
    for workers in (1, 2, 3):
        out = tmp_path / f"w{workers}"
        m = prepare(str(src), out, _opts(workers=workers, format="webp"))
        outs.append(_digests(out))
    assert outs[0] == outs[1] == outs[2]  # every shard and dataset.json
    assert m.count("train") + m.count("val") == 23 and m.extra["skipped"] == 1
    assert all(s.ext == "webp" and s.bytes > 0 for v in m.splits.values() for s in v)


def test_an_unreadable_image_shrinks_only_its_own_shard(tmp_path: Path) -> None:
    src = _folder(tmp_path)
    good = prepare(str(src), tmp_path / "good", _opts())
    # truncate the second image of train shard 1 (keys index the sorted listing)
    listing = sorted(p.relative_to(src) for p in src.rglob("img*.*") if p.suffix != ".txt")
    shard1 = list(wds.tarfile_samples([{"url": str(tmp_path / "good" / "train-000001.tar")}]))
    broken = src / listing[int(shard1[1]["__key__"])]
    broken.write_bytes(broken.read_bytes()[:40])
    bad = prepare(str(src), tmp_path / "bad", _opts())
    g, b = good.splits, bad.splits
    # 23 images: 5 val, 18 train in shards of 4; only shard 1 loses a sample, no later key moves
    assert [s.count for s in g["train"]] == [4, 4, 4, 4, 2]
    assert [s.count for s in b["train"]] == [4, 3, 4, 4, 2]
    assert bad.extra["skipped"] == 1
    for split in ("train", "val"):
        for sg, sb in zip(g[split], b[split], strict=True):
            assert (sg.sha256 == sb.sha256) == (sg.file != "train-000001.tar" or split != "train")


def _parts(src: Path, out: Path, n: int, **kw: object) -> None:
    for i in range(n):
        prepare(str(src), out, _opts(shard_range=(i, n), **kw))


def test_parts_and_merge_equal_a_single_run_byte_for_byte(tmp_path: Path) -> None:
    src = _folder(tmp_path)
    (src / "class2" / "broken.jpg").write_bytes(b"")
    single = prepare(str(src), tmp_path / "single", _opts(format="jpg", quality=90))
    out = tmp_path / "parts"
    _parts(src, out, 3, format="jpg", quality=90)
    part1 = json.loads((out / "dataset.part-1-of-3.json").read_text())
    # 24 images: jobs 0-4 are train shards, 5-6 val shards; part 1 of 3 writes jobs 1 and 4
    assert [s["file"] for s in part1["splits"]["train"]["shards"]] == ["train-000001.tar", "train-000004.tar"]
    assert "val" not in part1["splits"]
    assert not (out / "dataset.json").exists()
    merged = merge(out)
    assert _digests(out) == _digests(tmp_path / "single")  # shards and dataset.json; part files gone
    assert merged.dataset_id == single.dataset_id and merged.extra["skipped"] == 1


def test_merge_names_what_is_missing_or_different(tmp_path: Path) -> None:
    src = _folder(tmp_path, n=12)
    out = tmp_path / "out"
    with pytest.raises(DatasetError, match=r"no dataset.part-\*-of-\*.json"):
        merge(tmp_path)
    prepare(str(src), out, _opts(shard_range=(0, 3)))
    prepare(str(src), out, _opts(shard_range=(2, 3)))
    with pytest.raises(DatasetError, match=r"missing part\(s\) 1/3 .*--shard-range 1/3"):
        merge(out)
    prepare(str(src), out, _opts(shard_range=(1, 3), quality=80, format="jpg"))
    with pytest.raises(DatasetError) as err:
        merge(out)
    assert "part 1/3" in str(err.value) and 'format "jpg" vs "png"' in str(err.value)
    assert "\n" not in str(err.value)
    # the source changed between array tasks: the plans differ
    Image.new("RGB", (20, 20)).save(src / "class0" / "late.png")
    prepare(str(src), out, _opts(shard_range=(1, 3)))
    with pytest.raises(DatasetError, match="part 1/3 .* different source listing"):
        merge(out)
    prepare(str(src), out, _opts(shard_range=(0, 3)))
    prepare(str(src), out, _opts(shard_range=(2, 3)))
    (out / "train-000002.tar").unlink()
    with pytest.raises(DatasetError, match=r"shard .*train-000002.tar of part 2/3 is missing"):
        merge(out)
    prepare(str(src), out, _opts(shard_range=(2, 3)))
    assert merge(out).count("train") + DatasetManifest.load(out).count("val") == 13
    assert not list(out.glob("dataset.part-*"))


def test_a_part_run_keeps_other_parts_and_a_whole_run_clears_stale_files(tmp_path: Path) -> None:
    src = _folder(tmp_path, n=12)
    out = tmp_path / "out"
    prepare(str(src), out, _opts())
    prepare(str(src), out, _opts(shard_range=(0, 2)))  # a part run: dataset.json is stale, others kept
    assert not (out / "dataset.json").exists() and (out / "train-000001.tar").exists()
    prepare(str(src), out, _opts(samples_per_shard=100))  # a whole run: one shard per split, no parts
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "train-000000.tar", "val-000000.tar"]


def test_cli_part_runs_and_merge(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _folder(tmp_path, n=8)
    out = tmp_path / "out"
    common = ["--resolution", "16", "--samples-per-shard", "2", "--no-progress", "--resize", "pad"]
    for i in range(2):
        assert bigtrain_main(["prepare", str(src), str(out), *common, "--shard-range", f"{i}/2"]) == 0
    assert "bigtrain prepare --merge" in capsys.readouterr().out
    assert bigtrain_main(["prepare", "--merge", str(out)]) == 0
    m = DatasetManifest.load(out)
    assert m.count("train") + m.count("val") == 8 and m.extra["resize"] == "pad"
    with pytest.raises(SystemExit) as exc:
        bigtrain_main(["prepare", "--merge", str(out)])
    assert exc.value.code == 2 and "bigtrain: error: no dataset.part" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bigtrain_main(["prepare", str(src), str(out), "--shard-range", "2/2"])
    assert "expected i/n" in capsys.readouterr().err


@pytest.mark.slow  # seconds: 5,000 digits, twice
def test_mnist_with_workers_and_parts_equals_the_shared_shards(tmp_path: Path, mnist_shards: Path) -> None:
    def opts(**kw: object) -> PrepareOptions:
        base = {"resolution": 32, "samples_per_shard": 500, "progress": False}
        return PrepareOptions(**{**base, **kw})  # type: ignore[arg-type]

    prepare("builtin:mnist5k", tmp_path / "w2", opts(workers=2))
    assert _digests(tmp_path / "w2") == _digests(mnist_shards)
    for i in range(2):
        prepare("builtin:mnist5k", tmp_path / "p", opts(shard_range=(i, 2)))
    merge(tmp_path / "p")
    assert _digests(tmp_path / "p") == _digests(mnist_shards)
