"""Optional CPU speed machinery (tuned convs, Winograd, fused BatchNorm), injected by the loop."""
