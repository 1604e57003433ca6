"""The embedded sim workcell: franky-sim's MuJoCo FR3 with the six real-robot tasks of the DreamVLA paper (§4.3).

Modules: `scene` (MJCF), `tasks` (layouts and success predicates of the tasks in `robot.tasks`), `workcell`
(`SimWorkcell`), `render` (offscreen colour + depth), `experts` (scripted experts, run by the `Runner` as
`ScriptedPolicy`). Nothing is imported here, so `robot.cameras.sim` can use `robot.sim.render` without pulling in
the workcell; the workcell hands each sim camera its render source (itself).
"""
