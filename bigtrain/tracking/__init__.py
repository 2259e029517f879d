"""Experiment tracking: a small ``Tracker`` interface; MLflow (default), TensorBoard and W&B implementations."""

from bigtrain.tracking.base import NullTracker, Tracker, flatten

__all__ = ["NullTracker", "Tracker", "flatten"]
