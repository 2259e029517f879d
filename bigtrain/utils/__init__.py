"""Small helpers shared by every step of the pipeline."""
