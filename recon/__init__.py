"""recon: what a user runs — methods, the training loop, evaluation and the command line."""
