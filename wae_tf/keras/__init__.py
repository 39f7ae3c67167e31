"""The Keras-native API: `WAE`, a `keras.Model` that trains with `fit` (also `wae_tf.WAE`).

A folder of its own, above `serving/` in the import rule: `WAE.export` writes the serving
contract (serving/saved_model.py), which `model/` may not import, and the package's top level
is full (tests/imports_test.py: at most 16 modules).
"""

from wae_tf.keras.wae_model import WAE

__all__ = ["WAE"]
