"""The shared defaults, kept for config files that import `configs.base`.

They live in `distill_jax/config_defaults.py` (inside the package, so that an installed
`distill_jax` needs no top-level `configs` module): edit them there.
"""

from distill_jax.config_defaults import HUB_IDS, apply_arg, apply_runlocal, get_base_config

__all__ = ["HUB_IDS", "apply_arg", "apply_runlocal", "get_base_config"]
