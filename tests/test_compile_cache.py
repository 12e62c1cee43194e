"""JAX's persistent compilation cache lives in the workdir, so a resume does not recompile."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# A fresh process (the cache is set once, before the first compile): point the cache with our
# rule, compile one function, list what landed where.
_SCRIPT = """
import pathlib, sys
import jax, jax.numpy as jnp
from distill_jax import config_defaults
from distill_jax.train import setup
config = config_defaults.get_base_config()
config.compilation_cache = sys.argv[2] == "on"
setup.use_compilation_cache(config, pathlib.Path(sys.argv[1]))
jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((8, 8))).block_until_ready()
print(jax.config.jax_compilation_cache_dir)
"""


def _run(workdir: pathlib.Path, switch: str, env_dir: str | None) -> str:
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    if env_dir:
        env["JAX_COMPILATION_CACHE_DIR"] = env_dir
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(workdir), switch],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("switch", "env_dir", "where"),
    [("on", None, "workdir"), ("on", "user", "user"), ("off", None, None)],
)
def test_compiled_programs_land_in_the_workdir_cache(tmp_path, switch, env_dir, where):
    workdir, user = tmp_path / "work", tmp_path / "user_cache"
    printed = _run(workdir, switch, str(user) if env_dir else None)
    in_workdir = list((workdir / "compile_cache").glob("*"))
    in_user = list(user.glob("*")) if user.exists() else []
    if where == "workdir":
        assert printed == str(workdir / "compile_cache") and in_workdir and not in_user
    elif where == "user":  # the user's JAX_COMPILATION_CACHE_DIR wins
        assert printed == str(user) and in_user and not in_workdir
    else:
        assert printed in ("None", "") and not in_workdir and not in_user
