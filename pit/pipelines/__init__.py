"""Pipelines selectable with `config.pipeline`."""
from __future__ import annotations

from typing import Callable

from pit.pipelines import gap_reward, generate, ppo, sft
from pit.pipelines import dpo, reward
from pit.pipelines import improve
from pit.pipelines import pit
from pit.pipelines import self_rewarding
from pit.pipelines import ser

PIPELINES: dict[str, Callable] = {
    "sft": sft.run,
    "generate": generate.run,
    "ppo": ppo.run,
    "gap_reward": gap_reward.run,
    "reward": reward.run,
    "dpo": dpo.run,
    "improve": improve.run,
    "pit": pit.run,
    "self_rewarding": self_rewarding.run,
    "ser": ser.run,
}
