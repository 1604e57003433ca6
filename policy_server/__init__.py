"""GPU side: `model/` (the network, its losses, config and checkpoints), `serving/` (engine, backend, ZeroMQ
server) and `training/` (fine-tuning). The wire it speaks lives in `dreamvla_client`, which the robot imports."""
