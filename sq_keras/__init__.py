"""sq_keras: cheap l-inf robust image classifiers with a soft-quantization input layer."""

__version__ = "0.1.0"
