"""The embedded sim workcell: franky-sim's MuJoCo FR3 with the six real-robot tasks of the DreamVLA paper (§4.3).

Modules: `scene` (MJCF), `tasks` (layouts, instructions, success predicates), `workcell` (`SimWorkcell`),
`render` (offscreen colour + depth), `experts` (scripted experts; `python -m robot.sim.experts`). Nothing is
imported here, so `robot.cameras.sim` can use `robot.sim.render` without pulling in the workcell.
"""
