"""Serving a checkpoint: the inference engine (history, batching), its backend and the ZeroMQ server.
Imports the model, never the trainer."""
