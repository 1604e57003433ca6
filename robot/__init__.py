"""Robot PC side: drivers, sim workcell, safety envelope, control loop. Never imports torch."""
