"""Live viser viewer for training and saved runs."""
