"""Privacy masking of ultrasound frames: hold rules (and, next, rendering and the streaming pipeline)."""
