"""Real servers on 127.0.0.1 for the remote-shard tests, started by the test and stopped with it:
an HTTP file server (Python's ``http.server``, which can also cut a response short, the way a
dropped connection does) and an S3 API (moto in server mode). And foreign shards in img2dataset's
layout (``{key}.jpg`` + ``{key}.json`` + ``{key}.txt``), made from scikit-image's colour photos.
"""

from __future__ import annotations

import io
import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image

from bigtrain.data.manifest import DatasetManifest
from bigtrain.data.stream import StreamSpec

CLASSES = ("cat", "coffee", "rocket")


class _Handler(SimpleHTTPRequestHandler):
    """Serves a folder; ``cut[path] = n`` makes the next n GETs of ``path`` stop half-way through
    the body (the declared length stays whole, so the client sees a broken transfer); ``gone``
    paths answer 503 (GET and HEAD). ``requests`` lists the GETs."""

    cut: dict[str, int]
    gone: set[str]
    requests: list[str]

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.requests.append(self.path)
        if self.path in self.gone:
            self.send_error(503, "unavailable")
            return
        if self.cut.get(self.path, 0) > 0:
            self.cut[self.path] -= 1
            body = Path(self.translate_path(self.path)).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's name
        if self.path in self.gone:
            self.send_error(503, "unavailable")
            return
        super().do_HEAD()


@contextmanager
def http_server(root: Path) -> Iterator[tuple[str, type[_Handler]]]:
    """``(base URL, handler class)``: set ``handler.cut`` / ``handler.gone`` to inject faults."""
    handler = type("Handler", (_Handler,), {"cut": {}, "gone": set(), "requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(root)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@contextmanager
def s3_server(bucket: str, files: dict[str, bytes]) -> Iterator[dict[str, str]]:
    """An S3 API on loopback (moto's server) holding ``files`` in ``bucket``; yields the environment
    (endpoint and dummy credentials) a client needs. The test process's own environment gets it
    too while the server runs."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {**S3_ENV, "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        client = boto3.client("s3")
        client.create_bucket(Bucket=bucket)
        for key, body in files.items():
            client.put_object(Bucket=bucket, Key=key, Body=body)
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


def _photos() -> list[np.ndarray]:
    from skimage import data

    return [data.chelsea(), data.coffee(), data.rocket()]


def write_img2dataset_shards(out: Path, shards: int, per_shard: int, seed: int = 0) -> list[Path]:
    """Shards as img2dataset writes them: 9-digit keys, ``.jpg`` (crops of varied size and aspect
    of three photos, one class per photo), ``.json`` (url, key, caption, size, a ``label`` name) and
    ``.txt`` (the caption). Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    photos = _photos()
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(shards):
        path = out / f"{s:05d}.tar"
        with wds.TarWriter(str(path), mtime=0) as sink:
            for j in range(per_shard):
                key = f"{s:05d}{j:04d}"
                c = int(rng.integers(len(photos)))
                h, w = photos[c].shape[:2]
                ch, cw = int(rng.integers(h // 3, h // 2)), int(rng.integers(w // 3, w // 2))
                y, x = int(rng.integers(0, h - ch)), int(rng.integers(0, w - cw))
                img = Image.fromarray(photos[c][y : y + ch, x : x + cw]).resize((cw // 4, ch // 4))
                buf = io.BytesIO()
                img.save(buf, format="JPEG", quality=90)
                caption = f"a photo of a {CLASSES[c]}, crop {j} of shard {s}"
                meta = {
                    "url": f"http://example.invalid/{key}.jpg",
                    "key": key,
                    "status": "success",
                    "caption": caption,
                    "width": img.width,
                    "height": img.height,
                    "label": CLASSES[c],
                }
                sink.write(
                    {
                        "__key__": key,
                        "jpg": buf.getvalue(),
                        "json": json.dumps(meta).encode(),
                        "txt": caption.encode(),
                    }
                )
        paths.append(path)
    return paths


def stream_spec(m: DatasetManifest, **kw: object) -> StreamSpec:
    """A stream over ``m``'s train shards with the manifest's shape, labels, captions and metadata:
    batches of 8 in shard order (shuffle buffer 1) and quick retries, unless ``kw`` says otherwise."""
    base: dict[str, object] = dict(
        batch_size=8,
        resolution=m.resolution,
        channels=m.channels,
        shuffle_buffer=1,
        label_key=m.label_key,
        classes=m.label_names,
        text=m.has_text,
        meta=m.has_meta,
        backoff_s=0.01,
    )
    base.update(kw)
    return StreamSpec(tuple(m.shard_paths("train")), **base)  # type: ignore[arg-type]
