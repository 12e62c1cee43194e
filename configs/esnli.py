"""e-SNLI: premise </s> hypothesis -> entailment | neutral | contradiction.

Usage: python launch.py --config=configs/esnli.py[:<preset>[,scratch][,runlocal]]
"""

import ml_collections

from distill_jax.config_defaults import dataset_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The reference's setup for esnli: fine-tune google/t5-v1_1-base on PaLM rationales.

    The fields are set in distill_jax/config_defaults.py.
    """
    return dataset_config("esnli", arg)
