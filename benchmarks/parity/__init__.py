"""One module per reference family for ``benchmarks/reference_parity.py``: each builds the
reference's own code (imported from a checkout, never copied) beside bigtrain's, copies the
reference tensors into bigtrain's by name and returns the measured differences."""
