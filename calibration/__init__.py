"""Camera intrinsics and hand-eye calibration. Never imports torch."""
