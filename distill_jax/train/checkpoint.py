"""Orbax checkpoints: the latest train states (with the data-iterator state) and the best params.

Layout under `<workdir>/checkpoints/`:
  latest/<step>/   train state + data iterator, every `checkpoint.every_steps`, keep N, async
  best/<step>/     params with the best validation accuracy so far (keep 1), and its metrics
Orbax writes each step to a temporary directory and renames it when complete, so a step
interrupted mid-write is never mistaken for a finished one: such leftovers are reported with a
warning and deleted. A finished step that no longer restores (files lost or truncated after a
crash) is skipped with a warning in favour of the newest step that does, and renamed aside.
"""

from __future__ import annotations

import pathlib
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from distill_jax import multihost
from distill_jax.errors import UserError

_TMP_SUFFIX = ".orbax-checkpoint-tmp"  # Orbax's name for a step still being written


class Checkpoints:
    """The latest/best checkpoint managers of one workdir."""

    def __init__(self, workdir: str | pathlib.Path, *, keep: int, async_save: bool):
        root = pathlib.Path(workdir).absolute() / "checkpoints"
        _warn_half_written(root)
        self.latest = ocp.CheckpointManager(
            root / "latest",
            item_names=("state", "data"),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                create=True,
                enable_async_checkpointing=async_save,
                cleanup_tmp_directories=True,
            ),
        )
        self.best = ocp.CheckpointManager(
            root / "best",
            item_names=("params",),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1,
                create=True,
                best_fn=lambda m: m["accuracy"],
                best_mode="max",
                enable_async_checkpointing=False,
                cleanup_tmp_directories=True,
            ),
        )

    def latest_step(self) -> int | None:
        """The newest complete train-state step, if any."""
        return self.latest.latest_step()

    def save(self, step: int, state, data_state: dict[str, Any], *, force: bool = False) -> None:
        """Saves state + iterator at `step` (asynchronously when enabled)."""
        self.latest.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)
            ),
            force=force,
        )

    def restore(self, step: int, abstract_state) -> tuple[Any, dict[str, Any]]:
        """Restores (state, data_state) at `step` straight into the target shardings."""
        restored = self.latest.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
            ),
        )
        return restored.state, restored.data

    def restore_latest(self, abstract_state) -> tuple[int, Any, dict[str, Any]] | None:
        """(step, state, data_state) of the newest step that restores; None without steps.

        A step that fails to restore while an older one succeeds was left incomplete (e.g.
        files lost in a crash after Orbax finalised it): it is skipped with a warning and
        renamed to `<step>.incomplete-<time>` so that the run can save that step again. When
        no step restores, the newest step's error is raised as a UserError (typically a
        checkpoint of a different model config).
        """
        failed: list[tuple[int, str]] = []
        for step in sorted(self.latest.all_steps(), reverse=True):
            try:
                state, data = self.restore(step, abstract_state)
                error = ""
            except Exception as e:  # I/O, TensorStore, metadata errors: all mean "not this step"
                error = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}"
            if not _on_every_process(not error):
                failed.append((step, error or "failed on another process"))
                continue
            for bad, why in failed:
                logging.warning(
                    "checkpoint step %d in %s is incomplete or unreadable (%s); skipping it and "
                    "resuming from step %d",
                    bad,
                    self.latest.directory,
                    why,
                    step,
                )
                self._set_aside(bad)
            if failed:
                self.latest.reload()
            return step, state, data
        if failed:
            step, why = failed[0]
            others = ", nor can any earlier step" if len(failed) > 1 else ""
            raise UserError(
                f"checkpoint step {step} in {self.latest.directory} cannot be restored ({why})"
                f"{others}. Was it written with a different model config? Use a new --workdir "
                "to start over."
            )
        return None

    def _set_aside(self, step: int) -> None:
        """Renames a bad step directory out of Orbax's view (process 0; shared file system)."""
        path = pathlib.Path(self.latest.directory) / str(step)
        aside = path.with_name(f"{step}.incomplete-{int(time.time())}")
        multihost.on_process0(lambda: path.rename(aside), f"renaming {path} aside")

    def best_accuracy(self) -> float | None:
        """Validation accuracy of the best checkpoint, if one exists."""
        step = self.best.best_step()
        if step is None:
            return None
        metrics = self.best.metrics(step)
        return None if metrics is None else float(metrics["accuracy"])

    def save_best(self, step: int, params, accuracy: float) -> None:
        """Keeps `params` if `accuracy` beats the best so far (Orbax keeps the top 1)."""
        self.best.save(
            step,
            args=ocp.args.Composite(params=ocp.args.StandardSave(params)),
            metrics={"accuracy": float(accuracy)},
            force=True,
        )
        self.best.wait_until_finished()

    def restore_best(self, abstract_params) -> tuple[int, Any] | None:
        """(step, params) of the best checkpoint, in the target shardings; None if none."""
        step = self.best.best_step()
        if step is None:
            return None
        restored = self.best.restore(
            step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract_params))
        )
        return step, restored.params

    def wait(self) -> None:
        """Blocks until pending async saves are on disk."""
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.wait()
        self.latest.close()
        self.best.close()


def _warn_half_written(root: pathlib.Path) -> None:
    """Warns about steps an interrupted save left in Orbax's temporary directories (the
    managers delete them: they are never restored)."""
    for manager in ("latest", "best"):
        for path in sorted((root / manager).glob(f"*{_TMP_SUFFIX}*")):
            logging.warning(
                "checkpoint step %s in %s was left half-written by an interrupted save; "
                "skipping it (deleting %s)",
                path.name.split(".", 1)[0],
                root / manager,
                path.name,
            )


def _on_every_process(ok: bool) -> bool:
    """Whether `ok` holds on every process (all must pick the same checkpoint step)."""
    if jax.process_count() == 1:
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))


def log_memory(compiled) -> None:
    """Prints the compiled step's memory analysis (per device)."""
    try:
        mem = compiled.memory_analysis()
    except Exception:  # not every backend implements it
        return
    if mem is None:
        return
    gib = 1 / 2**30
    logging.info(
        "train step memory per device: args %.3f GiB, outputs %.3f GiB, temps %.3f GiB, "
        "code %.3f GiB",
        mem.argument_size_in_bytes * gib,
        mem.output_size_in_bytes * gib,
        mem.temp_size_in_bytes * gib,
        mem.generated_code_size_in_bytes * gib,
    )


def abstract_like(tree):
    """ShapeDtypeStructs with the shardings of a live pytree (the restore target)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
