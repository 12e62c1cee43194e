"""Orbax checkpoints under `<workdir>/checkpoints/`:

  latest/<step>/   train state + data iterator, every `checkpoint.every_steps`, keep N, async
  best/<step>/     params with the best validation accuracy so far (keep 1), and its metrics

Orbax renames a step's temporary directory when it is complete; leftovers of an interrupted
save are reported and deleted. A finished step that no longer restores is set aside.
"""

from __future__ import annotations

import functools
import pathlib
import time
from typing import Any

import ml_collections
import orbax.checkpoint as ocp
from absl import logging

from distill_jax import multihost
from distill_jax.errors import UserError


class Checkpoints:
    """The latest/best checkpoint managers of one workdir, per the `checkpoint.*` config fields."""

    def __init__(self, workdir: str | pathlib.Path, cfg: ml_collections.ConfigDict):
        root = pathlib.Path(workdir).absolute() / "checkpoints"
        for path in sorted(root.glob("*/*.orbax-checkpoint-tmp*")):  # the managers delete them
            step = path.name.split(".", 1)[0]
            logging.warning(
                f"checkpoint step {step} in {path.parent} was left half-written by an "
                f"interrupted save; skipping it (deleting {path.name})"
            )
        common = dict(create=True, cleanup_tmp_directories=True)
        self.latest = ocp.CheckpointManager(
            root / "latest",
            item_names=("state", "data"),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=cfg.keep, enable_async_checkpointing=cfg.async_save, **common
            ),
        )
        self.best = ocp.CheckpointManager(  # synchronous: a save is on disk when it returns
            root / "best",
            item_names=("params",),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1,
                best_fn=lambda m: m["accuracy"],
                best_mode="max",
                enable_async_checkpointing=False,
                **common,
            ),
        )

    def save(self, step: int, state, data_state: dict[str, Any], *, force: bool = False) -> None:
        """Saves state + iterator at `step` (asynchronously when enabled)."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)
        )
        self.latest.save(step, args=args, force=force)

    def restore_latest(self, abstract_state) -> tuple[int, Any, dict[str, Any]] | None:
        """(step, state, data_state) of the newest step that restores, in the target shardings;
        None without steps. Newer steps that fail (files lost after Orbax finalised them) are
        renamed `<step>.incomplete-<time>`; if none restores, the newest one's error is raised."""
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
        )
        failed: list[tuple[int, str]] = []
        for step in sorted(self.latest.all_steps(), reverse=True):
            try:
                restored = self.latest.restore(step, args=args)
                error = ""
            except Exception as e:  # I/O, TensorStore, metadata errors: all mean "not this step"
                error = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}"
            if not multihost.on_every_process(not error):
                failed.append((step, error or "failed on another process"))
                continue
            for bad, why in failed:
                logging.warning(
                    f"checkpoint step {bad} in {self.latest.directory} is incomplete or "
                    f"unreadable ({why}); skipping it and resuming from step {step}"
                )
                path = pathlib.Path(self.latest.directory) / str(bad)  # shared file system
                aside = path.with_name(f"{bad}.incomplete-{int(time.time())}")
                rename = functools.partial(path.rename, aside)
                multihost.on_process0(rename, f"renaming {path} aside")
            if failed:
                self.latest.reload()
            return step, restored.state, restored.data
        if failed:
            step, why = failed[0]
            others = ", nor can any earlier step" if len(failed) > 1 else ""
            raise UserError(
                f"checkpoint step {step} in {self.latest.directory} cannot be restored ({why})"
                f"{others}. Was it written with a different model config? Use a new --workdir "
                "to start over."
            )
        return None

    def best_accuracy(self) -> float | None:
        """Validation accuracy of the best checkpoint, if one exists."""
        step = self.best.best_step()
        metrics = None if step is None else self.best.metrics(step)
        return None if metrics is None else float(metrics["accuracy"])

    def save_best(self, step: int, params, accuracy: float) -> None:
        """Keeps `params` if `accuracy` beats the best so far (Orbax keeps the top 1)."""
        args = ocp.args.Composite(params=ocp.args.StandardSave(params))
        self.best.save(step, args=args, metrics={"accuracy": float(accuracy)}, force=True)

    def restore_best(self, abstract_params) -> tuple[int, Any] | None:
        """(step, params) of the best checkpoint, in the target shardings; None if none."""
        step = self.best.best_step()
        if step is None:
            return None
        args = ocp.args.Composite(params=ocp.args.StandardRestore(abstract_params))
        return step, self.best.restore(step, args=args).params

    def close(self) -> None:
        """Waits for pending saves, then closes the managers."""
        self.latest.close()
        self.best.close()
