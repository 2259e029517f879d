"""The WebDataset stream: exact resume, disjoint rank/worker splits, counted corrupt samples."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
import webdataset as wds
from PIL import Image

from bigtrain.data.manifest import DatasetError, DatasetManifest
from bigtrain.data.stream import DataStream, StreamSpec


def _spec(shards: list[str], **kw: object) -> StreamSpec:
    base = dict(batch_size=16, resolution=32, channels=1, seed=3, shuffle_buffer=200)
    base.update(kw)
    return StreamSpec(tuple(shards), **base)  # type: ignore[arg-type]


def _take(stream: DataStream, n: int) -> list[list[str]]:
    return [next(stream)["keys"] for _ in range(n)]


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_resume_sees_exactly_the_uninterrupted_samples(mnist_shards: Path, workers: int) -> None:
    shards = DatasetManifest.load(mnist_shards).shard_paths("train")
    spec = _spec(shards, num_workers=workers, flip=True)
    # 300 batches of 16 cross the epoch boundary (4,500 images) and the per-worker split
    full = _take(DataStream(spec), 300)
    first = DataStream(spec)
    head = _take(first, 137)
    state = first.state_dict()
    resumed = DataStream(spec)
    resumed.load_state_dict(state)
    assert head + _take(resumed, 163) == full


def test_batches_are_images_in_range_with_labels(mnist_shards: Path) -> None:
    shards = DatasetManifest.load(mnist_shards).shard_paths("train")
    batch = next(DataStream(_spec(shards)))
    assert batch["image"].shape == (16, 1, 32, 32) and batch["image"].dtype == torch.float32
    assert -1.0 <= batch["image"].min() < -0.99 and 0.99 < batch["image"].max() <= 1.0
    assert batch["label"].dtype == torch.long and set(batch["label"].tolist()) <= set(range(10))


@pytest.mark.parametrize("per_shard_split", [True, False])
def test_ranks_and_workers_read_disjoint_samples_covering_the_epoch(
    mnist_shards: Path, per_shard_split: bool
) -> None:
    shards = DatasetManifest.load(mnist_shards).shard_paths("train")
    if not per_shard_split:
        shards = shards[:3]  # fewer shards (3) than slots (2 ranks x 2 workers): split by sample
    n_images = 500 * len(shards)
    seen: list[set[str]] = []
    for rank in range(2):
        stream = DataStream(
            _spec(shards, batch_size=10, rank=rank, world_size=2, num_workers=2, shuffle_buffer=50)
        )
        keys: set[str] = set()
        batches = n_images // 10 // 2 - 30  # well inside the first epoch of every slot
        for _ in range(batches):
            keys.update(next(stream)["keys"])
        assert len(keys) == batches * 10  # no repeats inside an epoch
        seen.append(keys)
    assert not seen[0] & seen[1]


def test_shuffle_depends_on_seed_and_is_reproducible(mnist_shards: Path) -> None:
    shards = DatasetManifest.load(mnist_shards).shard_paths("train")
    a = _take(DataStream(_spec(shards, seed=1)), 3)
    assert a == _take(DataStream(_spec(shards, seed=1)), 3)
    assert a != _take(DataStream(_spec(shards, seed=2)), 3)


def _write_shard(path: Path, n: int, corrupt: frozenset[int] = frozenset()) -> None:
    with wds.TarWriter(str(path), mtime=0.0) as w:
        for i in range(n):
            buf = io.BytesIO()
            Image.new("L", (8, 8), color=i * 10 % 255).save(buf, format="PNG")
            png = b"\x89PNG garbage" if i in corrupt else buf.getvalue()
            w.write({"__key__": f"{i:04d}", "png": png, "cls": b"0"})


def test_corrupt_samples_are_skipped_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    shard = tmp_path / "train-000000.tar"
    _write_shard(shard, 20, corrupt={3, 11})
    stream = DataStream(StreamSpec((str(shard),), batch_size=6, resolution=8, channels=1, shuffle_buffer=1))
    keys = [k for _ in range(3) for k in next(stream)["keys"]]
    assert len(keys) == 18 and not {"train-000000.tar:0003", "train-000000.tar:0011"} & set(keys)
    assert stream.state.skipped == 2
    assert "skipped corrupt sample 0003" in caplog.text


def test_unreadable_everything_stops_instead_of_spinning(tmp_path: Path) -> None:
    shard = tmp_path / "train-000000.tar"
    shard.write_bytes(b"this is not a tar file")
    stream = DataStream(StreamSpec((str(shard),), batch_size=2, resolution=8, channels=1))
    with pytest.raises(DatasetError, match="read no samples in epoch 0.*1 failed shard reads"):
        next(stream)


def test_truncated_and_missing_shards_are_counted_and_the_rest_is_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shards = [tmp_path / f"train-{i:06d}.tar" for i in range(3)]
    for shard in shards:
        _write_shard(shard, 10)
    data = shards[1].read_bytes()
    shards[1].write_bytes(data[: len(data) // 2])  # cut mid-member, as a failed copy leaves it
    shards[2].unlink()  # gone after the run started
    spec = StreamSpec(tuple(map(str, shards)), batch_size=5, resolution=8, channels=1, shuffle_buffer=1)
    stream = DataStream(spec)
    keys = [k for _ in range(6) for k in next(stream)["keys"]]  # two epochs of what is left
    from_shard = {k.split(":")[0] for k in keys}
    assert "train-000002.tar" not in from_shard and "train-000000.tar" in from_shard
    assert stream.state.shard_errors >= 2  # per epoch: the truncated one and the missing one
    assert "unreadable shard skipped" in caplog.text
    state = stream.state_dict()
    again = DataStream(spec)
    again.load_state_dict(state)
    assert again.state.shard_errors == stream.state.shard_errors  # the count travels with the position


def test_prepared_labels_are_indices_even_when_class_names_are_numbers(tmp_path: Path) -> None:
    """Folders named 1, 2, 10 sort as "1", "10", "2"; `.cls` holds the index into that list, and the
    stream must not look it up as a name (which would give "1" -> index 0)."""
    from bigtrain.data.prepare import PrepareOptions, prepare

    src = tmp_path / "src"
    for name, value in (("1", 0), ("2", 120), ("10", 250)):
        (src / name).mkdir(parents=True)
        for i in range(4):
            Image.new("L", (8, 8), value).save(src / name / f"{i}.png")
    m = prepare(str(src), tmp_path / "ds", PrepareOptions(resolution=8, val_fraction=0, progress=False))
    assert m.classes == ["1", "10", "2"] and m.label_names == ()
    spec = StreamSpec(
        tuple(m.shard_paths("train")),
        12,
        8,
        3,
        shuffle_buffer=1,
        label_key=m.label_key,
        classes=m.label_names,
    )
    batch = next(DataStream(spec))
    level = {"1": 0, "10": 250, "2": 120}
    for label, img in zip(batch["label"].tolist(), batch["image"], strict=True):
        assert round(float((img[0, 0, 0] + 1) * 127.5)) == level[m.classes[label]]
