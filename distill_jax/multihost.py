"""Agreement between the processes of a multi-host job: process 0 decides, all follow.

A check of the shared file system followed by a barrier is a race: a process that checks after
another one has written skips the barrier (or meets a different one: `sync_global_devices name
mismatch`). So process 0 alone checks and does the work, and the others learn its answer in a
collective that is also the barrier. With one process these are plain calls.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import jax
import numpy as np
from jax.experimental import multihost_utils

from distill_jax.errors import UserError

T = TypeVar("T")


def process0_says(value: bool) -> bool:
    """Process 0's `value`, on every process (all must call it: a collective)."""
    if jax.process_count() == 1:
        return bool(value)
    return bool(multihost_utils.broadcast_one_to_all(np.asarray(bool(value))))


def on_every_process(ok: bool) -> bool:
    """Whether `ok` holds on every process (all must call it: a collective)."""
    if jax.process_count() == 1:
        return bool(ok)
    return bool(np.all(multihost_utils.process_allgather(np.asarray(bool(ok)))))


def on_process0(fn: Callable[[], T], what: str) -> T | None:
    """`fn()` on process 0 (None elsewhere), every process returning once it has finished (a
    barrier); an exception in `fn` is raised there and, as a UserError naming `what`, elsewhere."""
    result, error = None, None
    if jax.process_index() == 0:
        try:
            result = fn()
        except BaseException as e:  # re-raised below, after the others have been told
            error = e
    if not process0_says(error is None):
        if error is not None:
            raise error
        raise UserError(f"{what} failed on process 0; its output has the error.")
    return result
