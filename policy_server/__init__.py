"""GPU side: the DreamVLA model, its checkpoints, inference engine and server.

Kept free of heavy imports so that torch-free modules (the wire protocol, the client) import on a robot PC.
"""
