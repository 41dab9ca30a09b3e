"""PIT: JAX/Flax-native self-improvement training of language models.

PIT (Wang et al., 2023), Self-Rewarding LMs (Yuan et al., 2024) and SER on one
sharded decoder, one sampler, one training loop and one set of losses. The CLI is
`pit --config=CONFIG[:preset] --workdir=DIR` (also `python -m pit.main`); configs
ship with the package (`pit.paths.config_file`).
"""
__version__ = "0.1.0"
