"""Reference CNN models: architectures, training/export scripts, shipped ONNX files and cards."""
