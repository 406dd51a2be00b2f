"""Biometry: geometry that turns segmentation masks into clinical measurements."""
