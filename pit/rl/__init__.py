"""Reinforcement learning from a scalar reward: scorers and PPO rollouts."""
