"""Runtime: numpy + OpenCV + onnxruntime. Never imports torch."""
