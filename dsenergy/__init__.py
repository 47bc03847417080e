"""ΔEnergy out-of-distribution detection and EBM prompt tuning for CLIP-like models."""

__version__ = "0.1.0"
