"""Evaluation: metrics, the feature classifier, figures, and the evaluator of a run."""
