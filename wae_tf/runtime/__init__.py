"""The training loop's services: checkpoints, cluster and signals, progress, TensorBoard logs."""
