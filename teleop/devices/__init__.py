"""Operator devices for `dv-teleop record`: each reports the operator's newest command (`command.TeleopCommand`);
`command.TeleopPolicy` turns it into the loop's actions. Keyboard, SpaceMouse, and the sim's scripted hand."""
