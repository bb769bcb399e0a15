"""Models: names, preprocessing specs, weight loading, exported TorchScript/ONNX files,
Kinetics-400 labels and groups, and the per-frame preprocessing that matches the weights."""
