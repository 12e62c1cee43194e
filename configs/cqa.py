"""CommonsenseQA: 5-way multiple choice; label = the answer text.

Usage: python launch.py --config=configs/cqa.py[:<preset>[,scratch][,runlocal]]
"""

import ml_collections

from distill_jax.config_defaults import dataset_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The reference's setup for cqa: fine-tune google/t5-v1_1-base on PaLM rationales.

    The fields are set in distill_jax/config_defaults.py.
    """
    return dataset_config("cqa", arg)
