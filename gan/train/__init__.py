"""Training any generator: the loop, seeding, checkpoints and resume (`trainer`), its data
(`data`), where its metrics go (`sinks`), and several processes training one model under
torchrun (`distributed`)."""
