"""bigtrain: train image generative models at scale (WebDataset -> Accelerate -> clean-fid -> MLflow)."""

__version__ = "0.1.0"
