"""Pipelines selectable with `config.pipeline`."""
from __future__ import annotations

from typing import Callable

from pit.pipelines import generate, ppo, sft

PIPELINES: dict[str, Callable] = {
    "sft": sft.run,
    "generate": generate.run,
    "ppo": ppo.run,
}
