"""Work on recorded files: classify, datasets, training, evaluation and export, int8
quantization, the ``bench`` command and the notebook API."""
