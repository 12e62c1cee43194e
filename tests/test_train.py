"""End-to-end training on the generic fixtures with 4 fake CPU devices.

One workdir per mesh; the runs are shared by the tests below (module-scoped fixtures), so
the suite compiles each train step once.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import generic
from distill_jax.data import pipeline
from distill_jax.model.t5 import T5
from distill_jax.tokenizer import Tokenizer
from distill_jax.train import loop, setup
from distill_jax.train.logger import read_metrics
from tests import fixtures

pytestmark = pytest.mark.slow


def tiny_config(data_dir, mesh=(4, 1, 1), **train):
    """configs/generic.py:runlocal on the fixture data, dropout off so losses are exact."""
    c = generic.get_config("runlocal")
    c.data.dir = str(data_dir)
    c.data.max_input_length = 48
    c.data.max_target_length = 24
    c.data.pack_input_length = 96
    c.data.pack_target_length = 64
    c.model.dropout_rate = 0.0
    c.train.max_steps = 4
    c.train.eval_steps = 100  # only the final validation
    c.checkpoint.every_steps = 2
    c.eval.max_examples = 4
    c.eval.gen_max_len = 6
    c.logging.tensorboard = False
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
    for key, value in train.items():
        c.train[key] = value
    return c


def train_losses(workdir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(workdir / "metrics.jsonl") if "loss" in r}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return fixtures.write_generic_fixture(tmp_path_factory.mktemp("data"), n_train=40)


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory):
    """Workdirs of 4-step runs on three meshes."""
    out = {}
    for mesh in [(4, 1, 1), (2, 2, 1), (1, 2, 2)]:
        workdir = tmp_path_factory.mktemp("run_" + "x".join(map(str, mesh)))
        loop.train_and_evaluate(tiny_config(data_dir, mesh), workdir)
        out[mesh] = workdir
    return out


def test_meshes_give_the_same_losses(runs):
    reference = train_losses(runs[(4, 1, 1)])
    assert sorted(reference) == [1, 2, 3, 4]
    assert len(set(reference.values())) == 4  # every step logged its own loss
    for mesh in [(2, 2, 1), (1, 2, 2)]:
        losses = train_losses(runs[mesh])
        np.testing.assert_allclose(
            [losses[s] for s in sorted(reference)],
            [reference[s] for s in sorted(reference)],
            rtol=1e-5,
            atol=1e-5,
            err_msg=f"mesh {mesh}",
        )


def test_workdir_contract(runs):
    workdir = runs[(4, 1, 1)]
    config = json.loads((workdir / "config.json").read_text())
    assert config["train"]["max_steps"] == 4
    rows = read_metrics(workdir / "metrics.jsonl")
    train_rows = [r for r in rows if "split" not in r]
    for key in (
        "step",
        "loss",
        "label_loss",
        "rationale_loss",
        "lr",
        "grad_norm",
        "examples_per_s",
    ):
        assert all(key in r for r in train_rows), key
    assert {r["split"] for r in rows if "split" in r} == {"valid", "test"}
    assert (workdir / "predictions" / "valid_4.jsonl").exists()
    assert (workdir / "checkpoints" / "latest" / "4").is_dir()
    assert (workdir / "curves.png").stat().st_size > 1000
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["steps"] == 4 and 0.0 <= summary["test_accuracy"] <= 1.0


def reference_objective(params, model, tokenizer, records, alpha: float) -> float:
    """The objective (docs/architecture.md) without packing: two padded batches, token means."""

    def token_mean_ce(prefix: str, target_key: str) -> tuple[float, int]:
        enc = [tokenizer.encode(prefix + r["input"])[:47] + [1] for r in records]
        dec = [tokenizer.encode(r[target_key])[:23] + [1] for r in records]
        enc_len, dec_len = max(map(len, enc)), max(map(len, dec))
        enc_arr = np.zeros((len(records), enc_len), np.int32)
        tgt = np.zeros((len(records), dec_len), np.int32)
        for i, (e, d) in enumerate(zip(enc, dec, strict=True)):
            enc_arr[i, : len(e)] = e
            tgt[i, : len(d)] = d
        dec_in = np.concatenate([np.zeros_like(tgt[:, :1]), tgt[:, :-1]], axis=1)
        logits = model.apply({"params": params}, jnp.asarray(enc_arr), jnp.asarray(dec_in))
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(tgt))
        mask = tgt > 0
        return float((ce * mask).sum()), int(mask.sum())

    label_sum, n_label = token_mean_ce("predict: ", "label")
    rationale_sum, n_rationale = token_mean_ce("explain: ", "rationale")
    return alpha * label_sum / n_label + (1 - alpha) * rationale_sum / n_rationale


def test_first_step_loss_equals_the_definition(runs, data_dir):
    """The logged step-1 loss equals the objective recomputed on the same 8 examples."""
    workdir = runs[(4, 1, 1)]
    config = tiny_config(data_dir)
    tokenizer = Tokenizer.from_dir(workdir / setup.TOKENIZER_DIR)
    splits = setup.load_records(config, workdir)
    it = pipeline.TrainIterator(
        splits["train"],
        tokenizer,
        model_type="task_prefix",
        batch_size=config.train.batch_size,
        grad_steps=1,
        max_input_length=48,
        max_target_length=24,
        seed=config.seed,
    )
    examples = [splits["train"][int(i)] for i in it.examples_at(0)]
    model_cfg = setup.build_model_config(config, tokenizer)
    model = T5(model_cfg)
    tokens = jnp.ones((1, 8), jnp.int32)
    params = model.init({"params": jax.random.key(config.seed)}, tokens, tokens)["params"]
    params = jax.tree.map(
        lambda x: x.unbox() if hasattr(x, "unbox") else x,
        params,
        is_leaf=lambda x: hasattr(x, "unbox"),
    )
    expected = reference_objective(params, model, tokenizer, examples, config.train.alpha)
    assert train_losses(workdir)[1] == pytest.approx(expected, rel=1e-5)


def test_resume_reproduces_the_uninterrupted_run(runs, data_dir, tmp_path):
    """Stopped after step 2 (checkpoint), rerun: steps 3-4 equal the uninterrupted run."""
    config = tiny_config(data_dir)
    summary = loop.train_and_evaluate(config, tmp_path, stop_at_step=2)
    assert summary["preempted"] and summary["step"] == 2
    assert sorted(train_losses(tmp_path)) == [1, 2]
    loop.train_and_evaluate(tiny_config(data_dir), tmp_path)
    resumed = train_losses(tmp_path)
    uninterrupted = train_losses(runs[(4, 1, 1)])
    assert sorted(resumed) == [1, 2, 3, 4]
    for step in (3, 4):
        assert resumed[step] == pytest.approx(uninterrupted[step], rel=1e-6), step
