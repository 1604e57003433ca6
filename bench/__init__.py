"""Latency benchmarks of the policy server, measured on the machine that will run it."""
