"""wae_tf: Wasserstein Auto-Encoders (Tolstikhin et al., ICLR 2018) in TensorFlow 2 / Keras 3."""

import os

from wae_tf.config import Config  # noqa: F401  (stdlib only)

# TensorFlow's CPU tensors come from its BFC pool instead of malloc, which hands large buffers
# back to the OS so that every step faults them in again: the pool made the training step
# faster on the CPUs measured (docs/performance.md). TF reads this when it allocates its first
# tensor; set TF_CPU_ALLOCATOR_USE_BFC=false to keep malloc. Where TF's oneDNN custom ops are on
# (its default on CPUs with AVX512_VNNI, AVX512_BF16 or AMX) it takes oneDNN's pool either way.
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")

__version__ = "0.1.0"


def __getattr__(name):
    """`wae_tf.WAE` (wae_tf.keras), imported on first use: `import wae_tf` loads no TensorFlow."""
    if name == "WAE":
        from wae_tf.keras.wae_model import WAE
        return WAE
    raise AttributeError(f"module 'wae_tf' has no attribute {name!r}")
