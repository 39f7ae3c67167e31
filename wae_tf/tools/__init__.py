"""Developer tools: the benchmark, fault injection, the paper's comparison, the serving check."""
