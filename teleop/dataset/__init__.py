"""Crash-safe LeRobot-v3 dataset writer, verifier and repair tool (no torch)."""

from teleop.dataset.layout import CameraSpec, DatasetConfig, ResumeMismatch
from teleop.dataset.writer import DatasetWriter, EpisodeAborted, EpisodeWriter

__all__ = ["CameraSpec", "DatasetConfig", "DatasetWriter", "EpisodeAborted", "EpisodeWriter", "ResumeMismatch"]
