"""Import TensorFlow without its C++ start-up notices (CUDA stubs, oneDNN) on stderr.

TensorFlow's absl logging prints before TF_CPP_MIN_LOG_LEVEL takes effect, so the entry points
import it through here: stderr is silenced for the import only, errors still propagate.
"""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

if "tensorflow" not in sys.modules:
    _saved = os.dup(2)
    _null = os.open(os.devnull, os.O_WRONLY)
    try:
        sys.stderr.flush()
        os.dup2(_null, 2)
        import tensorflow  # noqa: F401
    finally:
        os.dup2(_saved, 2)
        os.close(_saved)
        os.close(_null)

import tensorflow  # noqa: E402,F811

tensorflow.get_logger().setLevel("ERROR")  # "Assets written to ..." and similar INFO chatter
