"""`train_and_evaluate(config, workdir)`: the whole run, resumable at any checkpoint."""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import json
import pathlib
import signal
import threading
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from distill_jax import config_check, multihost, predictor, sharding
from distill_jax.data import packing, pipeline, sources
from distill_jax.errors import UserError
from distill_jax.train import checkpoint, evaluate, logger, perf, setup
from distill_jax.train.state import learning_rate_schedule
from distill_jax.train.step import jit_train_step

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: "stopped early, rerun the same command to resume"


class TrainingDiverged(UserError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


@contextlib.contextmanager
def _sigterm_flag():
    """An event that SIGTERM sets; the loop checks it at step boundaries."""
    flag = threading.Event()

    def handle(signum, frame):
        logging.warning("SIGTERM received: saving a checkpoint at the next step, then exiting")
        flag.set()

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, handle) if main else None
    try:
        yield flag
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _prefetch(batches, steps: range, batch_sharding, meter: perf.Throughput, depth: int = 2):
    """Yields (step, rows per micro-batch, global batch) for `steps`, built and transferred
    `depth` ahead on one thread (no grain thread too: on a small CPU each busy thread takes a
    core from XLA); `meter` counts each step with its batch's host and waiting seconds."""
    put = lambda v: jax.make_array_from_process_local_data(batch_sharding, v)

    def build():
        t0 = time.perf_counter()
        return {k: put(v) for k, v in next(batches).items()}, time.perf_counter() - t0

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        ahead = collections.deque(pool.submit(build) for _ in steps[:depth])
        for i, step in enumerate(steps):
            t0 = time.perf_counter()
            batch, host_s = ahead.popleft().result()  # re-raises the pipeline's errors here
            rows = batch["encoder_input_tokens"].shape[1]
            meter.count(rows, host_s, waited=time.perf_counter() - t0)
            if i + depth < len(steps):
                ahead.append(pool.submit(build))  # built while this step runs
            yield step, rows, batch


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | pathlib.Path,
    *,
    stop_at_step: int | None = None,
) -> dict:
    """Trains per `config` in `workdir`, resuming from its latest checkpoint if any; returns the
    summary (also in <workdir>/summary.json), with 'preempted': True when SIGTERM (or
    `stop_at_step`, a scripted interruption for tests) stopped the run after a checkpoint."""
    t_start = time.time()
    run = _Run(config, pathlib.Path(workdir))
    with sharding.activate(run.ms.mesh), _sigterm_flag() as sigterm:
        run.compile_ahead()
        stopped = run.train(sigterm, stop_at_step)
        summary = {"preempted": True, "step": stopped} if stopped else run.finish()
    run.ckpts.close()
    run.writer.close()
    if stopped:
        return summary
    logger.plot_curves(run.workdir)
    summary["wall_time_s"] = round(time.time() - t_start, 1)
    logger.write_atomic(run.workdir / "summary.json", json.dumps(summary, indent=2) + "\n")
    logging.info("summary: %s", summary)
    return summary


class _Run:
    """One run in three steps: set up (`__init__`, `compile_ahead`), `train`, `finish`."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: pathlib.Path):
        """Config, records, model, train batches, checkpoints and the (restored) state."""
        config_check.validate(config)
        workdir.mkdir(parents=True, exist_ok=True)
        resolved = json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n"
        logger.write_atomic(workdir / "config.json", resolved)
        self.config, self.workdir = config, workdir
        splits = setup.load_records(config, workdir)
        t = config.train
        self.ms = ms = setup.ModelSetup(config, workdir, splits["train"])
        self.cost = perf.cost_model(ms.model_cfg, jax.default_backend())
        self.train_data = pipeline.TrainIterator(
            splits["train"],
            ms.tokenizer,
            **{k: t[k] for k in ("model_type", "batch_size", "grad_steps")},
            **{k: config.data[k] for k in setup.PACKING_FIELDS},
            seed=config.seed,
            row_multiple=sharding.batch_axis_size(ms.mesh),
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            prefetch=0,  # `_prefetch` builds ahead on its own thread
            attention_length=self.cost.attention_length,
        )
        self.ckpts = checkpoint.Checkpoints(workdir, config.checkpoint)
        self.state, self.start_step, data_state = ms.initial_state(self.ckpts)
        if data_state is not None:
            self.train_data.set_state(data_state)
        self.writer = writer = logger.MetricsWriter(workdir, tensorboard=config.logging.tensorboard)
        writer.drop_after(self.start_step)
        llm_labels = config.data.label_type == "llm" and config.data.name != "generic"
        if self.start_step == 0 and llm_labels:
            for split in ("train", "test"):
                acc = sources.llm_label_accuracy(splits[split], config.data.name)
                writer.write({"step": 0, "split": split, "llm_label_accuracy": acc})
                logging.info("LLM label accuracy on %s: %.4f", split, acc)
        self.best = self.ckpts.best_accuracy()
        self.batch_sharding = NamedSharding(ms.mesh, P(None, sharding.BATCH_AXES, None))
        self.rng = jax.random.fold_in(jax.random.key(config.seed), 1)  # dropout stream
        self.meter = perf.Throughput(t.batch_size)
        self.steps: dict[int, Any] = {}  # rows per micro-batch -> compiled train step
        self.metrics = None  # the last step's, on device
        settings = predictor.Settings.from_config(config)
        evaluator = predictor.Predictor(None, ms.model_cfg, ms.tokenizer, ms.mesh, settings)
        self.run_eval = lambda params, split, step: evaluate.score_split(
            evaluator, params, split, splits[split], step, config, workdir, writer
        )

    def compile_ahead(self) -> None:
        """Compiles the step for every row count the run uses, before step 1: plans are pure
        functions of (seed, step), so the rows each step needs are known (on every process);
        `packing.choose_row_counts` weighs padding against more compilations."""
        t, data = self.config.train, self.train_data
        lengths, t0 = (data.pack_input_length, data.pack_target_length), time.perf_counter()
        needed = data.needed_row_counts(t.max_steps)  # all steps: a resume picks the same
        data.fix_row_counts(packing.choose_row_counts(needed, self.cost.compile_steps))
        logging.info("rows of %s tokens, {rows: steps} %s (planned in %.1f s); compiling %s",
                     lengths, needed, time.perf_counter() - t0, data.shapes)  # fmt: skip
        step_fn = jit_train_step(
            self.ms.model,
            self.ms.tx,
            learning_rate_schedule(t),
            alpha=t.alpha,
            model_type=t.model_type,
            state_shardings=self.ms.state_shardings,
            batch_sharding=self.batch_sharding,
        )
        abstract = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.batch_sharding)
        for rows in data.shapes:
            batch = pipeline.empty_batch(t.grad_steps, rows, *lengths)
            compiled = step_fn.lower(self.state, jax.tree.map(abstract, batch), self.rng).compile()
            perf.log_memory(compiled)
            self.meter.flops[rows] = perf.compiled_flops(compiled)
            self.steps[rows] = compiled

    def train(self, sigterm: threading.Event, stop_at_step: int | None) -> int | None:
        """Steps to train.max_steps; returns the step it stopped (and saved) at if preempted."""
        c, t, start = self.config, self.config.train, self.start_step
        saved_step = start
        self.meter.reset()
        steps = range(start, t.max_steps)
        batches = _prefetch(self.train_data, steps, self.batch_sharding, self.meter)
        with tqdm(  # loss, examples/s and ETA on process 0
            initial=start,
            total=t.max_steps,
            disable=not c.logging.progress_bar or jax.process_index() != 0,
            unit="step",
            dynamic_ncols=True,
        ) as bar:
            for step, rows, batch in batches:
                self.state, self.metrics = self.steps[rows](self.state, batch, self.rng)
                done = step + 1
                at_log = done % t.log_every == 0 or done == t.max_steps
                if at_log:
                    metrics = jax.device_get(self.metrics)
                    self.check_finite(metrics, done)
                    row = {"step": done, **{k: float(v) for k, v in metrics.items()}}
                    row.update(self.meter.report())
                    self.writer.write(row)
                    bar.set_postfix(loss=f"{row['loss']:.4f}", ex_s=f"{row['examples_per_s']:.1f}")
                bar.update(1)
                if done % t.eval_steps == 0 and done < t.max_steps:
                    self.validate(done)
                    self.meter.reset()
                at_save = done % c.checkpoint.every_steps == 0
                if at_save and done < t.max_steps:
                    self.save(done)
                    saved_step = done
                # With several processes all must agree to stop, so they ask at sync points only.
                sync = jax.process_count() == 1 or at_log or at_save
                preempted = sync and not multihost.on_every_process(not sigterm.is_set())
                if preempted or done == stop_at_step:
                    if saved_step != done:
                        self.save(done, force=True)
                    self.ckpts.latest.wait_until_finished()
                    return done
        return None

    def finish(self) -> dict:
        """Final checkpoint and validation, then the test split on the best-validation params."""
        final_step = int(jax.device_get(self.state.step))
        if self.start_step < self.config.train.max_steps:
            self.save(final_step, force=True)
            self.validate(final_step)
        self.ckpts.latest.wait_until_finished()
        best = self.ckpts.restore_best(self.ms.abstract_state.params)
        best_step, test_params = best if best is not None else (final_step, self.state.params)
        return {
            "best_valid_accuracy": self.best,
            "best_step": best_step,
            "test_accuracy": self.run_eval(test_params, "test", best_step),
            "steps": final_step,
            "examples_per_s": self.meter.overall_examples_per_s(),
            "padding_fraction": self.train_data.padding_fraction,
            "compiled_train_shapes": len(self.steps),
            "preempted": False,
        }

    def validate(self, step: int) -> None:
        """Scores the valid split; keeps the params as the best checkpoint when they are."""
        acc = self.run_eval(self.state.params, "valid", step)
        if self.best is None or acc > self.best:
            self.best = acc
            self.ckpts.save_best(step, self.state.params, acc)

    def save(self, step: int, force: bool = False) -> None:
        """Checkpoints the state and the data position (the state's: the prefetcher is ahead)."""
        self.check_finite(self.metrics, step)
        data_state = {**self.train_data.get_state(), "step": step}
        self.ckpts.save(step, self.state, data_state, force=force)

    def check_finite(self, metrics, step: int) -> None:
        """Stops the run when the loss is NaN or inf, keeping the last good checkpoint."""
        loss = float(jax.device_get(metrics["loss"]))  # set: saves and logs follow a step
        if not np.isfinite(loss):
            self.ckpts.latest.wait_until_finished()
            raise TrainingDiverged(
                f"loss became {loss} at step {step}; stopping without saving it. The last good "
                f"checkpoint (step {self.ckpts.latest.latest_step()}) is kept in "
                f"{self.workdir / 'checkpoints'}; lower train.lr or check the data."
            )
