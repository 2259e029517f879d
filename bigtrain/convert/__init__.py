"""``bigtrain convert FORMAT SRC OUT [OVERRIDES]``: released models of the reference projects as
bigtrain checkpoints, which sample, evaluate, export, load and fine-tune (``init_from``) like a run's.

A *format* (one module here, registered with :func:`register_format`) reads the reference's files
and renames their tensors into bigtrain's layout for the networks of the task the overrides build;
:func:`convert` builds that task, loads the weights strictly (every tensor placed, every shape
equal) and writes ``OUT/checkpoints/step-N/`` with the run's config and the source's provenance.
"""

from bigtrain.convert.base import FORMATS, Format, Source, convert, formats, register_format

__all__ = ["FORMATS", "Format", "Source", "convert", "formats", "register_format"]
