"""The safety envelope: limits (`SafetyConfig`), the filter (`SafetyEnvelope`) and its counters (`Interventions`).

Pure logic with no I/O, independent of the policy: the control loop runs every chunk and every target through it.
"""

from robot.safety.config import Box, SafetyConfig
from robot.safety.envelope import Rejection, SafetyEnvelope
from robot.safety.interventions import Intervention, Interventions

__all__ = ["Box", "Intervention", "Interventions", "Rejection", "SafetyConfig", "SafetyEnvelope"]
