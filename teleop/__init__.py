"""Teleoperation devices and the demo recorder. Never imports torch."""
