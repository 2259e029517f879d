"""Experiment tracking: a small ``Tracker`` interface and its MLflow implementation."""

from bigtrain.tracking.base import NullTracker, Tracker, flatten

__all__ = ["NullTracker", "Tracker", "flatten"]
