"""The training loop's services: checkpoints, the cluster and signals, progress, TensorBoard
logs."""
