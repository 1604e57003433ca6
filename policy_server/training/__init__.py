"""Fine-tuning on recorded demonstrations: teacher targets, the trainer and closed-loop evaluation.
Imports the model, never the server."""
