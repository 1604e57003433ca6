"""The wire between the robot PC and the policy server: protocol, client, contract, transport security and the
state/action conventions. Torch-free by construction (a test imports it with torch blocked): the robot PC installs
this package, never the model."""
