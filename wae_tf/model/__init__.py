"""The model: the paper's networks, the regularisers' maths, the WAE step, the latent sampler."""
