"""Top-level windows and the larger composite views they hold."""
