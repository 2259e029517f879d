"""`bigtrain prepare` on messy real-world folders: what pixels come out of 16-bit, palette, CMYK,
grayscale and EXIF-rotated files; output formats; resize policies; unlabelled folders; captions and
metadata. Every test writes real image files with PIL and decodes the shards it gets back."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from bigtrain.data.manifest import DatasetError, DatasetManifest
from bigtrain.data.prepare import PrepareOptions, prepare

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def _prepare(src: Path, out: Path, **kw: object) -> DatasetManifest:
    opts = {"resolution": 8, "val_fraction": 0.0, "samples_per_shard": 100, "progress": False, **kw}
    return prepare(str(src), out, PrepareOptions(**opts))  # type: ignore[arg-type]


def _samples(m: DatasetManifest, split: str = "train") -> list[dict[str, object]]:
    return list(wds.tarfile_samples([{"url": p} for p in m.shard_paths(split)]))


def _by_name(m: DatasetManifest, src: Path) -> dict[str, dict[str, object]]:
    """Samples keyed by their source file's relative path (keys are the sorted listing's indices)."""
    files = sorted(
        p.relative_to(src) for p in src.rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"}
    )
    names = [f.as_posix() for f in files]
    return {names[int(str(s["__key__"]))]: s for s in _samples(m)}


def _pixels(data: object) -> np.ndarray:
    assert isinstance(data, bytes)
    return np.asarray(Image.open(io.BytesIO(data)))


def _solid(path: Path, color: tuple[int, ...], size: tuple[int, int] = (8, 8), mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def test_hard_source_files_convert_to_the_right_pixels(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    # 16-bit gray: 65535 is white, 128*257 is mid-gray (a plain convert would clip both to 255)
    g16 = np.full((8, 8), 65535, np.uint16)
    g16[0, 0], g16[0, 1] = 0, 128 * 257
    Image.fromarray(g16).save(src / "a" / "gray16.png")
    # palette PNGs: index 1 (blue) at (0, 0); in the second, index 1 is transparent
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([*RED, *BLUE] + [0] * 762)
    pal.putpixel((0, 0), 1)
    pal.save(src / "a" / "palette.png")
    pal.save(src / "a" / "palette_transparent.png", transparency=1)
    # grayscale PNG whose value 50 is transparent (a tRNS chunk); grayscale JPEG
    Image.new("L", (8, 8), 50).save(src / "a" / "gray_trns.png", transparency=50)
    Image.new("L", (8, 8), 100).save(src / "a" / "gray.jpg", quality=100)
    # CMYK JPEG of pure red, saved with an upper-case suffix deep inside the class folder
    (src / "a" / "deep" / "er").mkdir(parents=True)
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(src / "a" / "deep" / "er" / "cmyk.JPEG", quality=100)

    m = _prepare(src, tmp_path / "out")
    got = {k: _pixels(s["png"]) for k, s in _by_name(m, src).items()}
    assert set(got) == {
        "a/gray16.png", "a/palette.png", "a/palette_transparent.png", "a/gray_trns.png", "a/gray.jpg",
        "a/deep/er/cmyk.JPEG",
    }  # fmt: skip
    assert all(v.shape == (8, 8, 3) and v.dtype == np.uint8 for v in got.values())
    assert got["a/gray16.png"][0, 0].tolist() == [0, 0, 0]
    assert got["a/gray16.png"][0, 1].tolist() == [128, 128, 128]
    assert got["a/gray16.png"][4, 4].tolist() == [255, 255, 255]
    assert got["a/palette.png"][0, 0].tolist() == list(BLUE)
    assert got["a/palette.png"][4, 4].tolist() == list(RED)
    assert got["a/palette_transparent.png"][0, 0].tolist() == list(WHITE)
    assert got["a/palette_transparent.png"][4, 4].tolist() == list(RED)
    assert (got["a/gray_trns.png"] == 255).all()
    assert np.abs(got["a/gray.jpg"].astype(int) - 100).max() <= 1
    assert np.abs(got["a/deep/er/cmyk.JPEG"].astype(int) - RED).max() <= 3


def _exif_rotated_jpeg(path: Path) -> None:
    """Stored 64 wide x 32 high, red left half, blue right half, EXIF orientation 6 (shown rotated
    90 degrees clockwise: 32 wide x 64 high, red on top)."""
    arr = np.zeros((32, 64, 3), np.uint8)
    arr[:, :32], arr[:, 32:] = RED, BLUE
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, quality=95, exif=exif.tobytes())


def test_exif_orientation_is_applied_and_shorter_keeps_the_aspect_ratio(tmp_path: Path) -> None:
    _exif_rotated_jpeg(tmp_path / "src" / "phone" / "IMG_0001.JPG")
    m = _prepare(tmp_path / "src", tmp_path / "out", resolution=16, resize="shorter")
    (sample,) = _samples(m)
    img = _pixels(sample["png"])
    assert img.shape == (32, 16, 3)  # the shorter side (width, after rotation) is 16
    assert np.abs(img[:12].astype(int) - RED).max() < 40 and np.abs(img[-12:].astype(int) - BLUE).max() < 40
    assert m.extra["resize"] == "shorter" and m.resolution == 16


def test_pad_letterboxes_and_center_crops(tmp_path: Path) -> None:
    _solid(tmp_path / "src" / "c" / "wide.png", WHITE, size=(64, 32))
    pad = _samples(_prepare(tmp_path / "src", tmp_path / "pad", resolution=32, resize="pad"))
    img = _pixels(pad[0]["png"])
    assert img.shape == (32, 32, 3)
    assert (img[:8] == 0).all() and (img[24:] == 0).all() and (img[8:24] == 255).all()  # black bars
    center = _prepare(tmp_path / "src", tmp_path / "center", resolution=32)
    assert (_pixels(_samples(center)[0]["png"]) == 255).all() and center.extra["resize"] == "center"


@pytest.mark.parametrize(("fmt", "magic"), [("jpg", b"\xff\xd8\xff"), ("webp", b"RIFF")])
def test_jpg_and_webp_shards(tmp_path: Path, fmt: str, magic: bytes) -> None:
    from skimage import data as skdata

    src = tmp_path / "src"
    (src / "cat").mkdir(parents=True)
    Image.fromarray(skdata.chelsea()).save(src / "cat" / "chelsea.png")
    Image.fromarray(skdata.coffee()).save(src / "cat" / "coffee.png")
    png = _prepare(src, tmp_path / "png", resolution=64)
    lossy = _prepare(src, tmp_path / fmt, resolution=64, format=fmt, quality=95)
    (shard,) = lossy.splits["train"]
    assert shard.ext == fmt and shard.bytes == (tmp_path / fmt / shard.file).stat().st_size > 0
    assert png.splits["train"][0].ext == "png"
    assert lossy.extra["format"] == fmt and lossy.extra["quality"] == 95 and png.extra["quality"] is None
    for a, b in zip(_samples(png), _samples(lossy), strict=True):
        assert set(b) - {"__key__", "__url__"} == {fmt, "cls"}
        assert bytes(b[fmt])[: len(magic)] == magic  # type: ignore[arg-type]
        mse = ((_pixels(a["png"]).astype(float) - _pixels(b[fmt]).astype(float)) ** 2).mean()
        assert 10 * np.log10(255**2 / mse) > 30  # quality 95: above 30 dB PSNR against the lossless image


def test_flat_folder_is_an_unlabelled_dataset(tmp_path: Path) -> None:
    for i in range(3):
        _solid(tmp_path / "src" / f"{i}.png", (i * 100, 0, 0))
    (tmp_path / "src" / ".hidden.png").write_bytes(b"junk")  # hidden files are not images of the set
    m = _prepare(tmp_path / "src", tmp_path / "out")
    assert m.classes == [] and m.extra["label_key"] is None and m.label_key is None and m.count("train") == 3
    samples = _samples(m)
    assert all("cls" not in s for s in samples) and m.extra["skipped"] == 0
    assert sorted(int(_pixels(s["png"])[0, 0, 0]) for s in samples) == [0, 100, 200]
    raw = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert raw["classes"] == [] and raw["label_key"] is None


def test_unreadable_files_are_counted_and_logged_by_name(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _solid(tmp_path / "src" / "a" / "good.png", RED)
    (tmp_path / "src" / "a" / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (tmp_path / "src" / "b" / "sub").mkdir(parents=True)
    (tmp_path / "src" / "b" / "sub" / "empty.png").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="bigtrain.data.prepare"):
        m = _prepare(tmp_path / "src", tmp_path / "out")
    assert m.classes == ["a", "b"] and m.count("train") == 1 and m.extra["skipped"] == 2
    assert "a/truncated.jpg" in caplog.text and "b/sub/empty.png" in caplog.text


def _caption_src(root: Path) -> Path:
    src = root / "src"
    _solid(src / "cat" / "a.jpg", RED)
    _solid(src / "cat" / "b.png", BLUE)
    _solid(src / "dog" / "c.png", WHITE)
    return src


def test_sidecar_captions_and_metadata_are_carried(tmp_path: Path) -> None:
    src = _caption_src(tmp_path)
    (src / "cat" / "a.txt").write_text("a red square\n")
    (src / "cat" / "a.json").write_text('{"photographer": "me", "year": 2024}')
    m = _prepare(src, tmp_path / "out")
    assert m.extra["captions"] is True and m.extra["metadata"] is True and m.has_text and m.has_meta
    got = _by_name(m, src)
    assert got["cat/a.jpg"]["txt"] == b"a red square"
    meta = got["cat/a.jpg"]["json"]
    assert isinstance(meta, bytes) and json.loads(meta) == {"photographer": "me", "year": 2024}
    assert "txt" not in got["cat/b.png"] and "json" not in got["dog/c.png"]
    assert got["dog/c.png"]["cls"] == b"1"


def test_no_sidecars_means_no_caption_flags(tmp_path: Path) -> None:
    m = _prepare(_caption_src(tmp_path), tmp_path / "out")
    assert m.extra["captions"] is False and m.extra["metadata"] is False


def test_broken_metadata_skips_its_sample(tmp_path: Path) -> None:
    src = _caption_src(tmp_path)
    (src / "cat" / "b.json").write_text("{not json")
    m = _prepare(src, tmp_path / "out")
    assert m.extra["skipped"] == 1 and m.count("train") == 2


def _write_captions(kind: str, root: Path) -> Path:
    rows = [("cat/a.jpg", "a red square"), ("dog/c.png", 'white, "bright"')]
    if kind == "folder":
        for rel, text in rows:
            (root / "caps" / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / "caps" / rel).with_suffix(".txt").write_text(text + "\n")
        return root / "caps"
    if kind == "jsonl":
        path = root / "caps.jsonl"
        path.write_text("".join(json.dumps({"file": r, "caption": t}) + "\n" for r, t in rows) + "\n")
        return path
    import csv

    path = root / f"caps.{kind}"
    with path.open("w", newline="") as f:
        writer = csv.writer(f, delimiter="\t" if kind == "tsv" else ",")
        writer.writerow(["file", "caption"])
        writer.writerows(rows)
    return path


@pytest.mark.parametrize("kind", ["folder", "jsonl", "csv", "tsv"])
def test_captions_from_a_folder_or_a_table(tmp_path: Path, kind: str) -> None:
    src = _caption_src(tmp_path)
    (src / "cat" / "b.txt").write_text("a sidecar that --captions overrides")
    m = _prepare(src, tmp_path / "out", captions=str(_write_captions(kind, tmp_path)))
    got = _by_name(m, src)
    assert got["cat/a.jpg"]["txt"] == b"a red square"
    assert got["dog/c.png"]["txt"] == b'white, "bright"'
    assert "txt" not in got["cat/b.png"] and m.extra["captions"] is True


def test_bad_caption_tables_are_one_line_errors(tmp_path: Path) -> None:
    src = _caption_src(tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"file": "cat/a.jpg", "caption": "ok"}\n{"caption": "no file"}\n')
    with pytest.raises(DatasetError, match=r"bad.jsonl:2: expected") as err:
        _prepare(src, tmp_path / "out", captions=str(bad))
    assert "\n" not in str(err.value)
    three = tmp_path / "three.csv"
    three.write_text("cat/a.jpg,one,two\n")
    with pytest.raises(DatasetError, match="three.csv:1: expected 2 columns"):
        _prepare(src, tmp_path / "out", captions=str(three))
    with pytest.raises(DatasetError, match="no such folder or file"):
        _prepare(src, tmp_path / "out", captions=str(tmp_path / "absent.csv"))
    with pytest.raises(DatasetError, match="needs an image folder"):
        prepare("builtin:mnist5k", tmp_path / "out", PrepareOptions(captions=str(three)))


def test_bad_options_are_rejected_before_any_work(tmp_path: Path) -> None:
    src = _caption_src(tmp_path)
    for kw, msg in [
        ({"format": "gif"}, "unknown image format"),
        ({"quality": 0}, "quality"),
        ({"resize": "random"}, "unknown resize"),
        ({"shard_range": (2, 2)}, "shard range"),
    ]:
        with pytest.raises(ValueError, match=msg):
            _prepare(src, tmp_path / "out", **kw)
    assert not (tmp_path / "out").exists()
