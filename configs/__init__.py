"""Config files (`get_config(preset)` -> ConfigDict), installed as `pit.configs`."""
