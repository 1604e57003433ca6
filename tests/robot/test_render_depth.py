"""The sim's depth conversion: metric millimetres from MuJoCo's reversed depth buffer, and no data (0) for the
background and for non-finite buffer values, never an undefined float-to-int cast."""

from __future__ import annotations

import warnings

import numpy as np

from robot.sim.render import depth_buffer_to_mm


def test_depth_buffer_to_mm_is_metric_and_marks_missing_data_zero():
    near, far = 0.01, 10.0
    z = np.array([0.5, 1.234, 3.0])
    zbuf = (far * near / z - near) / (far - near)  # the inverse of the conversion
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a NaN reaching the uint16 cast warns: make that a failure
        mm = depth_buffer_to_mm(np.array([*zbuf, 0.0, np.nan, -near / (far - near), np.inf]), near, far)
    assert mm.dtype == np.uint16
    assert mm.tolist() == [500, 1234, 3000, 0, 0, 0, 0]
