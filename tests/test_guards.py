"""The learning-rate schedule's values, the NaN stop, and resume with dropout on."""

from __future__ import annotations

import logging
import re
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from distill_jax.data import pipeline
from distill_jax.errors import UserError
from distill_jax.model.t5 import T5
from distill_jax.tokenizer import Tokenizer
from distill_jax.train import loop, setup
from distill_jax.train.state import learning_rate_schedule, make_optimizer
from tests import fixtures
from tests import launch_util as lu
from tests.test_objective import padded, reference_loss, unbox


def hf_linear(step: int, lr: float, warmup: int, max_steps: int) -> float:
    """transformers.get_linear_schedule_with_warmup's factor times lr, written out."""
    if step < warmup:
        return lr * step / max(1, warmup)
    return lr * max(0.0, (max_steps - step) / max(1, max_steps - warmup))


def train_cfg(**kw):
    fields = dict(lr=1e-3, warmup_steps=10, max_steps=110, optimizer="adamw", weight_decay=0.0,
                  max_grad_norm=1.0)  # fmt: skip
    return ml_collections.ConfigDict({**fields, **kw})


@pytest.mark.parametrize("warmup", [10, 0])
def test_schedule_is_hf_linear_warmup_then_decay_to_zero(warmup):
    cfg = train_cfg(warmup_steps=warmup)
    schedule = learning_rate_schedule(cfg)
    for step in (0, 1, 5, 9, 10, 11, 35, 60, 109, 110, 111, 200):
        expected = hf_linear(step, cfg.lr, warmup, cfg.max_steps)
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-6, abs=1e-12), step
    assert float(schedule(cfg.max_steps)) == 0.0


def test_optimizer_steps_with_the_scheduled_rate():
    """With a constant gradient Adam's direction is sign(g), so update k is -lr(k) * sign(g)."""
    cfg = train_cfg(warmup_steps=2, max_steps=6)
    tx, schedule = make_optimizer(cfg), learning_rate_schedule(cfg)
    params = {"w": jnp.zeros((3,))}
    grads = {"w": jnp.asarray([0.3, -0.2, 0.1])}
    state = tx.init(params)
    for step in range(7):
        updates, state = tx.update(grads, state, params)
        expected = -float(schedule(step)) * np.sign(grads["w"])
        np.testing.assert_allclose(updates["w"], expected, rtol=1e-4, atol=1e-12, err_msg=step)


@pytest.mark.slow
def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path):
    """lr=1e30: step 1's loss is finite (and checkpointed), its update blows the params up to
    ~1e30, so step 2's loss overflows; the run must stop there, saving nothing of step 2."""
    data_dir = fixtures.write_generic_fixture(tmp_path / "data", n_train=16)
    config = lu.tiny_config(
        data_dir, train__lr=1e30, train__warmup_steps=0, train__log_every=1,
        checkpoint__every_steps=1, checkpoint__async_save=False,
    )  # fmt: skip
    workdir = tmp_path / "run"
    with pytest.raises(UserError) as info:
        loop.train_and_evaluate(config, workdir)
    assert type(info.value).__name__ == "TrainingDiverged"
    message = str(info.value)
    match = re.search(
        r"loss became (nan|inf|-inf) at step (\d+).*checkpoint \(step (\d+)\)", message
    )
    assert match, message
    bad, good = int(match.group(2)), int(match.group(3))
    assert 1 <= good == bad - 1 < config.train.max_steps, message
    latest = workdir / "checkpoints" / "latest"
    assert sorted(int(p.name) for p in latest.iterdir() if p.name.isdigit())[-1] == good
    params = lu.final_params(workdir, good)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))
    assert not (workdir / "summary.json").exists()
    losses = lu.train_losses(workdir)
    assert all(np.isfinite(losses[s]) for s in range(1, bad))


@pytest.mark.slow
def test_resume_with_dropout_reproduces_the_uninterrupted_run(tmp_path, caplog):
    """Resumed from the step-2 checkpoint of a finished run (a copy, its later checkpoint
    removed): steps 3-4 and the final params equal the run's own, with dropout on (its masks
    must follow the step, not the process)."""
    data_dir = fixtures.write_generic_fixture(tmp_path / "data", n_train=40)
    fields = dict(
        model__dropout_rate=0.1, data__max_target_length=40, train__max_steps=4,
        checkpoint__keep=3,
    )  # fmt: skip
    whole = tmp_path / "whole"
    loop.train_and_evaluate(lu.tiny_config(data_dir, **fields), whole)
    resumed_dir = lu.copy_workdir(whole, tmp_path / "resumed")
    shutil.rmtree(resumed_dir / "checkpoints" / "latest" / "4")
    (resumed_dir / "summary.json").unlink()
    with caplog.at_level(logging.INFO):
        loop.train_and_evaluate(lu.tiny_config(data_dir, **fields), resumed_dir)
    assert "resumed from step 2" in caplog.text
    assert [r["step"] for r in lu.rows_after(resumed_dir, 2)] == [3, 4]
    expected, resumed = lu.train_losses(whole), lu.train_losses(resumed_dir)
    assert sorted(resumed) == sorted(expected) == [1, 2, 3, 4]
    for step in (3, 4):
        assert resumed[step] == pytest.approx(expected[step], rel=1e-6), step
    lu.assert_params_close(lu.final_params(resumed_dir, 4), lu.final_params(whole, 4), atol=1e-6)

    # Dropout was really on: the first step's loss is not the dropout-free objective.
    config = lu.tiny_config(data_dir, **fields)
    tokenizer = Tokenizer.from_dir(whole / setup.TOKENIZER_DIR)
    records = setup.load_records(config, whole)["train"]
    it = pipeline.TrainIterator(
        records, tokenizer, model_type="task_prefix", batch_size=config.train.batch_size,
        grad_steps=1, max_input_length=48, max_target_length=40, seed=config.seed,
    )  # fmt: skip
    examples = [records[int(i)] for i in it.examples_at(0)]
    inputs = [r["input"] for r in examples]
    batches = {
        "label": (padded(tokenizer, ["predict: " + x for x in inputs], 48),
                  padded(tokenizer, [r["label"] for r in examples], 40)),
        "rationale": (padded(tokenizer, ["explain: " + x for x in inputs], 48),
                      padded(tokenizer, [r["rationale"] for r in examples], 40)),
    }  # fmt: skip
    model = T5(setup.build_model_config(config, tokenizer))
    tokens = jnp.ones((1, 8), jnp.int32)
    init = jax.jit(lambda rng: model.init({"params": rng}, tokens, tokens)["params"])
    params = unbox(init(jax.random.key(config.seed)))
    alpha = config.train.alpha
    no_dropout = float(jax.jit(lambda p: reference_loss(p, model, batches, alpha))(params))
    assert abs(expected[1] - no_dropout) > 1e-4 * no_dropout, (expected[1], no_dropout)
