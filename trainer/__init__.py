"""The seqrec trainer: GRU sequential retrieval (TensorFlow Recommenders) on a data_dir.

TensorFlow Recommenders needs Keras 2 (the `tf-keras` package), which TensorFlow
binds to `tf.keras` only when TF_USE_LEGACY_KERAS is set before `tf.keras` is first
used. It is set here, so every entry point and any `import trainer...` in a user's
script or notebook works from a plain environment (also after `import tensorflow`
or `import keras`: the binding is lazy). A user's explicit setting is kept.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
