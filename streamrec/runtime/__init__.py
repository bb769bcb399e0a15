"""Running a loaded model fast: the Classifier, its CPU/GPU backends (OpenVINO, ONNX Runtime,
TorchScript, CUDA graphs), exact graph rewrites, and the cache of prepared models."""
