"""Where shards live: lists of local paths, brace patterns and URLs, expanded and opened as byte streams.

A shard location is one of

* a local path (``/data/in1k/train-000000.tar``), a folder (all ``*.tar`` in it, sorted) or a glob;
* a brace pattern, as WebDataset writes them: ``shards/train-{000000..000099}.tar``;
* an ``http(s)://`` or ``s3://`` URL (any scheme fsspec knows: ``gs://`` with gcsfs installed, ...);
* a ``pipe:COMMAND`` whose standard output is the tar (``pipe:aws s3 cp s3://bucket/x.tar -``).

Several are joined with whitespace or ``::`` (WebDataset's separator). Remote shards are read as one
sequential stream (an HTTP GET, S3 ranged reads ahead of the tar parser): a shard is never
downloaded to disk first. fsspec (with s3fs for S3) does the protocols; S3 credentials and the
endpoint come from the usual AWS variables (``AWS_ENDPOINT_URL`` for MinIO or a local server) or
from ``data.storage_options``.
"""

from __future__ import annotations

import glob
import os
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

import braceexpand

from bigtrain.errors import DatasetError

PIPE = "pipe:"
_S3_BLOCK = 8 << 20  # S3 reads ahead in 8 MiB ranged GETs


def is_url(loc: str) -> bool:
    """True for ``scheme://`` URLs other than ``file://``, and for ``pipe:`` commands."""
    return loc.startswith(PIPE) or ("://" in loc and not loc.startswith("file://"))


def _local(loc: str) -> str:
    return loc[len("file://") :] if loc.startswith("file://") else loc


def expand(spec: str | Iterable[str]) -> list[str]:
    """Every shard location ``spec`` names, in order; DatasetError if it names none."""
    pieces = spec.replace("::", " ").split() if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for piece in pieces:
        if piece.startswith(PIPE):
            out.append(piece)  # a command: its braces and spaces are the shell's
            continue
        for loc in braceexpand.braceexpand(piece):
            if is_url(loc):
                out.append(loc)
                continue
            path = Path(_local(loc)).expanduser()
            if path.is_dir():
                found = sorted(str(p) for p in path.glob("*.tar"))
                if not found:
                    raise DatasetError(f"no *.tar shards in folder {path}")
                out.extend(found)
            elif glob.has_magic(str(path)):
                found = sorted(glob.glob(str(path)))
                if not found:
                    raise DatasetError(f"no shards match {path}")
                out.extend(found)
            else:
                out.append(str(path))
    if not out:
        raise DatasetError(f"no shards in '{spec}'")
    return out


def _fs(url: str, options: Mapping[str, Any] | None):
    import fsspec

    try:
        return fsspec.core.url_to_fs(url, **dict(options or {}))
    except (ImportError, ValueError) as exc:  # an unknown protocol, or its library not installed
        raise DatasetError(f"cannot open {url}: {exc}") from exc


class _Pipe:
    """A ``pipe:`` command's standard output; a non-zero exit status is an error at the end of the
    stream, so a failed download is never taken for a short shard."""

    def __init__(self, command: str):
        self.command = command
        # stderr to a file, not a pipe: a chatty command (curl's progress meter) would fill a pipe
        # that nobody reads until the end, and block
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(  # noqa: S602 - the user's own command, as in WebDataset
            command, shell=True, stdout=subprocess.PIPE, stderr=self.stderr
        )
        assert self.proc.stdout is not None
        self.stdout = self.proc.stdout

    def read(self, n: int = -1) -> bytes:
        data = self.stdout.read(n)
        if not data and n != 0:
            self._check()
        return data

    def _check(self) -> None:
        code = self.proc.wait()
        if code != 0:
            self.stderr.seek(0)
            err = self.stderr.read()[-4096:].decode(errors="replace").strip()
            last = err.splitlines()[-1] if err else ""
            raise OSError(f"'{self.command}' exited with status {code}: {last}")

    def close(self) -> None:
        self.stdout.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.stderr.close()

    def __enter__(self) -> _Pipe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_stream(loc: str, options: Mapping[str, Any] | None = None) -> IO[bytes]:
    """``loc`` opened for one sequential read; the caller closes it."""
    if loc.startswith(PIPE):
        return _Pipe(loc[len(PIPE) :])  # type: ignore[return-value]
    if not is_url(loc):
        return open(_local(loc), "rb")  # noqa: SIM115 - returned to the caller
    fs, path = _fs(loc, options)
    protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    if protocols & {"http", "https"}:
        # one streamed GET: no Range requests, which simple servers (and some CDNs) refuse; a size
        # given up front spares the HEAD request fsspec would make (and its failure would read as
        # "file not found" whatever the server said)
        return fs.open(path, "rb", block_size=0, size=-1)
    return fs.open(path, "rb", block_size=_S3_BLOCK, cache_type="readahead")


def size(loc: str, options: Mapping[str, Any] | None = None) -> int | None:
    """``loc``'s size in bytes, or None where the source cannot say (a pipe)."""
    if loc.startswith(PIPE):
        return None
    if not is_url(loc):
        return os.path.getsize(_local(loc))
    fs, path = _fs(loc, options)
    value = fs.size(path)
    return int(value) if value is not None else None
