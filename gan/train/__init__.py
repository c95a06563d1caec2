"""Training any generator: the loop, seeding, checkpoints and resume (`trainer`), its data
(`data`) and where its metrics go (`sinks`)."""
