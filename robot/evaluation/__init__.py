"""Closed-loop evaluation of a checkpoint (`dv-eval`): the real path (dv-serve, the Runner with its envelope,
franky -> franky-sim), scored per task with an interval, one video per episode, on seeds no demo was recorded on."""
