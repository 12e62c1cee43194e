"""`train_and_evaluate(config, workdir)`: the whole run, resumable at any checkpoint."""

from __future__ import annotations

import json
import pathlib
import queue
import signal
import threading
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from distill_jax import sharding
from distill_jax.data import pipeline, sources
from distill_jax.errors import UserError
from distill_jax.train import checkpoint, evaluate, logger, model_setup, perf, setup
from distill_jax.train.state import learning_rate_schedule, make_optimizer
from distill_jax.train.step import jit_train_step

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: "stopped early, rerun the same command to resume"


class TrainingDiverged(UserError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


class _Preemption:
    """Turns SIGTERM into a flag the loop checks at step boundaries."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        logging.warning("SIGTERM received: saving a checkpoint at the next step, then exiting")
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def agreed(self, at_sync_point: bool) -> bool:
        """Whether to stop now; with several processes all must agree, so only at sync points."""
        if jax.process_count() == 1:
            return self.requested
        if not at_sync_point:
            return False
        flags = multihost_utils.process_allgather(np.asarray(self.requested))
        return bool(np.any(flags))


def _prefetch(batches, steps, put, depth: int = 2):
    """Yields (step, device batch) for `steps`, transferred to devices on a background thread."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work():
        try:
            for step in steps:
                if stop.is_set():
                    return
                q.put((step, put(next(batches))))
        except BaseException as e:  # surface pipeline errors in the main thread
            q.put((None, e))
        q.put((None, None))

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while True:
            step, item = q.get()
            if step is None:
                if item is not None:
                    raise item
                return
            yield step, item
    finally:
        stop.set()


def write_config(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> None:
    """<workdir>/config.json: the resolved config, written atomically by process 0."""
    if jax.process_index() != 0:
        return
    tmp = workdir / "config.json.tmp"
    tmp.write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")
    tmp.replace(workdir / "config.json")


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | pathlib.Path,
    *,
    stop_at_step: int | None = None,
) -> dict:
    """Trains per `config` in `workdir`, resuming from its latest checkpoint if any.

    Returns the summary (also written to <workdir>/summary.json), including
    'preempted': True when SIGTERM (or `stop_at_step`, a scripted interruption used by tests)
    stopped the run early after saving a checkpoint.
    """
    t_start = time.time()
    workdir = pathlib.Path(workdir)
    setup.validate_config(config)
    workdir.mkdir(parents=True, exist_ok=True)
    write_config(config, workdir)
    splits = setup.load_records(config, workdir)
    t = config.train
    tx = make_optimizer(t)
    ms = model_setup.build(config, workdir, splits["train"], tx)
    mesh, model, tokenizer = ms.mesh, ms.model, ms.tokenizer

    train_data = pipeline.TrainIterator(
        splits["train"],
        tokenizer,
        model_type=t.model_type,
        batch_size=t.batch_size,
        grad_steps=t.grad_steps,
        max_input_length=config.data.max_input_length,
        max_target_length=config.data.max_target_length,
        pack_input_length=config.data.pack_input_length,
        pack_target_length=config.data.pack_target_length,
        row_bucket=config.data.row_bucket,
        seed=config.seed,
        row_multiple=sharding.batch_axis_size(mesh),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        attention_length=perf.cost_model(model.config, jax.default_backend()).attention_length,
    )
    logging.info(
        "packed rows: %d encoder x %d decoder tokens",
        train_data.pack_input_length,
        train_data.pack_target_length,
    )

    schedule = learning_rate_schedule(t)
    ckpts = checkpoint.Checkpoints(
        workdir, keep=config.checkpoint.keep, async_save=config.checkpoint.async_save
    )
    state, start_step, restored_data_state = model_setup.initial_state(ms, ckpts)
    if restored_data_state is not None:
        train_data.set_state(restored_data_state)

    def data_state(step: int) -> dict[str, Any]:
        # The prefetcher runs ahead of the state, so the position is the state's step.
        return {**train_data.get_state(), "step": step}

    writer = logger.MetricsWriter(workdir, tensorboard=config.logging.tensorboard)
    writer.drop_after(start_step)
    if start_step == 0 and config.data.label_type == "llm" and config.data.name != "generic":
        for split in ("train", "test"):
            acc = sources.llm_label_accuracy(splits[split], config.data.name)
            writer.write({"step": 0, "split": split, "llm_label_accuracy": acc})
            logging.info("LLM label accuracy on %s: %.4f", split, acc)

    batch_sharding = NamedSharding(mesh, P(None, sharding.BATCH_AXES, None))
    step_fn = jit_train_step(
        model,
        tx,
        schedule,
        alpha=t.alpha,
        model_type=t.model_type,
        state_shardings=ms.state_shardings,
        batch_sharding=batch_sharding,
    )
    rng = jax.random.fold_in(jax.random.key(config.seed), 1)  # dropout stream

    def put(local_batch):
        return {
            k: jax.make_array_from_process_local_data(batch_sharding, v)
            for k, v in local_batch.items()
        }

    best = ckpts.best_accuracy()
    eval_kwargs = dict(
        dataset=config.data.name,
        model_type=t.model_type,
        eval_cfg=config.eval,
        max_input_length=config.data.max_input_length,
        mesh=mesh,
    )

    def run_eval(params, split: str, step: int) -> float:
        acc, rows = evaluate.evaluate_split(
            params, ms.model_cfg, tokenizer, splits[split], **eval_kwargs
        )
        evaluate.write_predictions(workdir / "predictions" / f"{split}_{step}.jsonl", rows)
        writer.write({"step": step, "split": split, "accuracy": acc, "examples": len(rows)})
        logging.info("step %d: %s accuracy %.4f on %d examples", step, split, acc, len(rows))
        return acc

    meter = perf.Throughput(t.batch_size)
    progress = perf.progress_bar(config.logging.progress_bar, initial=start_step, total=t.max_steps)
    compiled_shapes: set = set()
    preempted = False
    saved_step = start_step
    last_metrics: dict[str, Any] = {}
    with sharding.activate(mesh), _Preemption() as preemption:
        for step, batch in _prefetch(train_data, range(start_step, t.max_steps), put):
            shapes = tuple(sorted((k, v.shape) for k, v in batch.items()))
            if shapes not in compiled_shapes:  # compile ahead, report memory and FLOPs
                compiled = step_fn.lower(state, batch, rng).compile()
                checkpoint.log_memory(compiled)
                meter.set_flops(perf.compiled_flops(compiled), shapes)
                compiled_shapes.add(shapes)
                meter.reset()
            state, metrics = step_fn(state, batch, rng)
            meter.count(shapes)
            done = step + 1
            at_log = done % t.log_every == 0 or done == t.max_steps
            if at_log:
                last_metrics = jax.device_get(metrics)
                if not np.isfinite(last_metrics["loss"]):
                    ckpts.wait()
                    raise TrainingDiverged(
                        f"loss became {last_metrics['loss']} at step {done}; stopping. The last "
                        f"good checkpoint (step {ckpts.latest_step()}) is kept in "
                        f"{workdir / 'checkpoints'}; lower train.lr or check the data."
                    )
                row = {"step": done, **perf.train_row(last_metrics), **meter.report()}
                writer.write(row)
                progress.set_postfix(loss=f"{row['loss']:.4f}", ex_s=f"{row['examples_per_s']:.1f}")
            progress.update(1)
            if done % t.eval_steps == 0 and done < t.max_steps:
                acc = run_eval(state.params, "valid", done)
                if best is None or acc > best:
                    best = acc
                    ckpts.save_best(done, state.params, acc)
                meter.reset()
            if done % config.checkpoint.every_steps == 0 and done < t.max_steps:
                _check_finite(metrics, done, ckpts, workdir)
                ckpts.save(done, state, data_state(done))
                saved_step = done
            sync_point = at_log or done % config.checkpoint.every_steps == 0
            if preemption.agreed(at_sync_point=sync_point) or done == stop_at_step:
                if saved_step != done:
                    _check_finite(metrics, done, ckpts, workdir)
                    ckpts.save(done, state, data_state(done), force=True)
                ckpts.wait()
                preempted = True
                break
        progress.close()
        if preempted:
            ckpts.close()
            writer.close()
            return {"preempted": True, "step": done}
        final_step = int(jax.device_get(state.step))
        if start_step < t.max_steps:
            _check_finite(metrics, final_step, ckpts, workdir)
            ckpts.save(final_step, state, data_state(final_step), force=True)
            acc = run_eval(state.params, "valid", final_step)
            if best is None or acc > best:
                best = acc
                ckpts.save_best(final_step, state.params, acc)
        ckpts.wait()
        best_restored = ckpts.restore_best(checkpoint.abstract_like(state.params))
        test_params, best_step = state.params, final_step
        if best_restored is not None:
            best_step, test_params = best_restored
        test_acc = run_eval(test_params, "test", best_step)
    ckpts.close()
    writer.close()
    logger.plot_curves(workdir)
    summary = {
        "best_valid_accuracy": best,
        "best_step": best_step,
        "test_accuracy": test_acc,
        "steps": final_step,
        "wall_time_s": round(time.time() - t_start, 1),
        "examples_per_s": meter.overall_examples_per_s(),
        "padding_fraction": train_data.padding_fraction,
        "preempted": False,
    }
    if jax.process_index() == 0:
        (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    logging.info("summary: %s", summary)
    return summary


def _check_finite(metrics, step: int, ckpts: checkpoint.Checkpoints, workdir) -> None:
    """Refuses to checkpoint a state produced by a non-finite loss."""
    loss = float(jax.device_get(metrics["loss"])) if metrics else 0.0
    if not np.isfinite(loss):
        ckpts.wait()
        raise TrainingDiverged(
            f"loss became {loss} at step {step}; stopping without saving it. The last good "
            f"checkpoint (step {ckpts.latest_step()}) is kept in {workdir / 'checkpoints'}."
        )
