"""Scorers that need more than a pure function: lm-eval's own tasks, the helpfulness judge, drift (KL to the seed), and the offline data IFEval's checkers read."""
