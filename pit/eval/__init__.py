"""Evaluation: both-orders win rates (PIT protocol), LLM judges, AlpacaEval files,
reward-model agreement metrics (Self-Rewarding LMs) and report tables/plots."""
