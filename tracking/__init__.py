"""The layer users touch, above the model: frame sources, the predictor and the evaluation loop."""

from tracking.frames import open_frames
from tracking.predictor import PipsTracker, build_model

__all__ = ["PipsTracker", "build_model", "open_frames"]
