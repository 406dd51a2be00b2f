"""fetalkit: an open toolkit for fetal-ultrasound AI that runs on an ordinary CPU."""

__version__ = "0.1.0"
