"""wae_tf: Wasserstein Auto-Encoders (Tolstikhin et al., ICLR 2018) in TensorFlow 2 / Keras 3."""

__version__ = "0.1.0"
