"""ANLI round 1: premise </s> hypothesis -> entailment | neutral | contradiction.

Usage: python launch.py --config=configs/anli1.py[:<preset>[,scratch][,runlocal]]
"""

import ml_collections

from distill_jax.config_defaults import dataset_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The reference's setup for anli1: fine-tune google/t5-v1_1-base on PaLM rationales.

    The fields are set in distill_jax/config_defaults.py.
    """
    return dataset_config("anli1", arg)
