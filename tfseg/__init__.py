"""tfseg: semantic segmentation of satellite and aerial imagery with TensorFlow / Keras 3."""
import os as _os

# TensorFlow logs CUDA/oneDNN notices at import on CPU machines; keep user output clean.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
_os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

__version__ = "0.1.0"
