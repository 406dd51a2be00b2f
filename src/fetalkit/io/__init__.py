"""Input/output: frames as H x W uint8 grayscale numpy arrays."""
