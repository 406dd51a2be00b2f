"""Dataset readers, one module per format, plus the one split helper."""
