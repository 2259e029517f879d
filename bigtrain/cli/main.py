"""``bigtrain COMMAND ...``: one thin module per command; this file only dispatches.

Errors a user can fix (missing shards, bad config, absent weights, a NaN loss, a damaged
checkpoint) print one line ``bigtrain: error: ...`` and exit non-zero, without a traceback.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

COMMANDS = {
    "prepare": "write WebDataset shards from an image folder or builtin:mnist5k",
    "index": "describe WebDataset shards where they are (folder, brace pattern, http(s)/s3/pipe URLs) for training",
    "train": "train (a Hydra app: bigtrain train experiment=mnist_dcgan data.path=...)",
    "tokenize": "encode image shards into token shards with a trained tokenizer (stage 2's data)",
    "info": "build a preset's networks without training: parameter counts, batch, precision",
    "inspect": "print a checkpoint's step and per-component SHA-256 digests",
    "evaluate": "a checkpoint's metrics (FID, IS, P/R; a tokenizer's rFID, PSNR, ...), logged to its MLflow run",
    "sample": "write a sample grid (or latent interpolations) from a checkpoint",
    "convert": "a released model (BigGAN-PyTorch, taming-transformers, LlamaGen) as a bigtrain checkpoint",
    "export": "a checkpoint's generator / tokenizer / prior as config.json + model.safetensors + model card",
    "compare": "FID curves of MLflow runs in one PNG, and the parameters that differ, side by side",
    "doctor": "check what a run needs (software, GPUs, weights, shards, MLflow, SLURM); exit 1 if missing",
}

EXIT_USER_ERROR = 2
EXIT_NONFINITE = 3


def _usage() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {k.ljust(width)}  {v}" for k, v in COMMANDS.items())
    return f"usage: bigtrain COMMAND [ARGS]\n\ncommands:\n{rows}\n\n`bigtrain COMMAND --help` for a command's options."


def one_line(exc: BaseException) -> str:
    """The error's own message. An error raised in a DataLoader worker arrives wrapped in the worker's
    traceback text; its last line is ``module.ErrorType: message``, the part a user needs."""
    text = str(exc).strip()
    if "\n" not in text:
        return text
    last = text.splitlines()[-1]
    name = type(exc).__name__
    return last.split(f"{name}: ", 1)[1] if f"{name}: " in last else last


@contextmanager
def user_errors_exit() -> Iterator[None]:
    """Turn the errors a user can fix into one ``bigtrain: error: ...`` line and an exit code.

    Used around every command, and inside the Hydra app too (Hydra would otherwise print a
    traceback for any exception raised in the task function).
    """
    from bigtrain.errors import USER_ERRORS, NonFiniteLossError

    try:
        yield
    except NonFiniteLossError as exc:
        print(f"bigtrain: error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_NONFINITE) from None
    except USER_ERRORS as exc:
        print(f"bigtrain: error: {one_line(exc)}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_USER_ERROR) from None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"bigtrain: error: unknown command '{cmd}'\n\n{_usage()}", file=sys.stderr)
        return EXIT_USER_ERROR
    from importlib import import_module

    module = import_module(f"bigtrain.cli.{cmd}")
    with user_errors_exit():
        return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())


def entry() -> None:
    """The ``bigtrain`` console script and ``python -m bigtrain``: ``main``, then the exit.

    A process that ran collectives (a rank under torchrun or srun) leaves through
    ``distributed.exit_now``, which skips the interpreter's teardown: see there for the abort it avoids.
    """
    from bigtrain import distributed as bdist

    try:
        code: int | str | None = main()
    except SystemExit as exc:
        code = exc.code
    except Exception:  # a crash: the traceback as Python prints it, then the same exit, status 1
        if not bdist.had_process_group():
            raise
        traceback.print_exc()
        code = 1
    if bdist.had_process_group():
        bdist.exit_now(code)
    sys.exit(code)
