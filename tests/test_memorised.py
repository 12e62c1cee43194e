"""Outputs of a model that knows its answers: eval, --mode=predict, export, best checkpoint.

A tiny T5 memorises 8 generic records (6 different labels; each `predict:` target is a lab
test name, each `explain:` target a sentence about it), so every output is known, non-empty
and depends on the input. The same run exercises the best-checkpoint rule: it is stopped at
its first validation (step 5), and resumed against a validation file whose labels the model
can never produce, so no later validation beats step 5 and the test split must be scored with
the step-5 parameters, which still output other labels than the final ones.
"""

from __future__ import annotations

import json
import shutil

import pytest

from distill_jax import modes
from distill_jax.train import loop
from tests import fixtures
from tests import launch_util as lu

pytestmark = pytest.mark.slow

RECORDS = fixtures.generic_records(8)
MAX_STEPS, BEST_STEP = 40, 5


def read_rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def memorise_config(data_dir, valid_file: str = ""):
    c = lu.tiny_config(data_dir)
    c.data.valid_file = valid_file
    c.data.max_target_length = 40  # whole rationales (~20 tokens)
    c.train.max_steps = MAX_STEPS
    c.train.eval_steps = BEST_STEP
    c.train.log_every = 5
    c.train.lr = 3e-3
    c.train.warmup_steps = 0
    c.checkpoint.every_steps = 1000  # only the forced saves: at the stop and at the end
    c.eval.max_examples = 0
    c.eval.gen_max_len = 12
    c.eval.rationale_max_len = 40
    c.eval.output_rationale = True
    return c


@pytest.fixture(scope="module")
def memorised(tmp_path_factory):
    """(config, workdir) of the finished run; valid and test hold the training inputs."""
    root = tmp_path_factory.mktemp("memorised")
    data_dir = root / "data"
    for split in ("train", "valid", "test"):
        fixtures.write_generic_file(data_dir / "generic" / f"generic_{split}.json", RECORDS)
    unreachable = [dict(r, label="zzz never") for r in RECORDS]
    bad_valid = fixtures.write_generic_file(root / "unreachable_valid.json", unreachable)
    workdir = root / "run"
    first = loop.train_and_evaluate(memorise_config(data_dir), workdir, stop_at_step=BEST_STEP)
    assert first["preempted"] and first["step"] == BEST_STEP
    config = memorise_config(data_dir, valid_file=str(bad_valid))
    summary = loop.train_and_evaluate(config, workdir)
    return config, workdir, summary


def test_eval_outputs_the_label_for_predict_and_the_rationale_for_explain(memorised):
    _, workdir, summary = memorised
    assert summary["steps"] == MAX_STEPS
    rows = read_rows(workdir / "predictions" / f"valid_{MAX_STEPS}.jsonl")
    assert [r["input"] for r in rows] == [r["input"] for r in RECORDS]
    assert [r["label"] for r in rows] == [r["label"] for r in RECORDS]
    assert [r["rationale"] for r in rows] == [r["rationale"] for r in RECORDS]
    assert all(r["reference"] == "zzz never" for r in rows)  # the resumed run's valid file


def test_test_split_is_scored_with_the_best_validation_params(memorised):
    _, workdir, summary = memorised
    assert summary["best_step"] == BEST_STEP and summary["steps"] == MAX_STEPS
    best_valid = read_rows(workdir / "predictions" / f"valid_{BEST_STEP}.jsonl")
    final_valid = read_rows(workdir / "predictions" / f"valid_{MAX_STEPS}.jsonl")
    test_rows = read_rows(workdir / "predictions" / f"test_{BEST_STEP}.jsonl")
    labels = [r["label"] for r in RECORDS]
    # The test split has the valid split's inputs: best params give the step-5 outputs...
    assert [r["label"] for r in test_rows] == [r["label"] for r in best_valid]
    assert [r.get("rationale") for r in test_rows] == [r.get("rationale") for r in best_valid]
    # ... which are not the final params' (else this test could not tell them apart).
    assert [r["label"] for r in best_valid] != [r["label"] for r in final_valid] == labels
    expected_acc = sum(r["label"] == r["reference"] for r in test_rows) / len(test_rows)
    assert summary["test_accuracy"] == pytest.approx(expected_acc) and expected_acc < 1.0
    assert not (workdir / "predictions" / f"test_{MAX_STEPS}.jsonl").exists()


def run_predict(config, workdir, tmp) -> list[dict]:
    """Rows that --mode=predict writes for the 8 inputs from `workdir`'s weights."""
    in_path = tmp / "in.jsonl"
    in_path.write_text("".join(json.dumps({"input": r["input"]}) + "\n" for r in RECORDS))
    out_path = tmp / "out.jsonl"
    assert modes.run_predict(config, workdir, str(in_path), str(out_path)) == len(RECORDS)
    return read_rows(out_path)


@pytest.fixture(scope="module")
def latest_workdir(memorised, tmp_path_factory):
    """A copy of the run without its best checkpoint: predict then uses the latest (step 40,
    memorised) train state instead of the best-validation (step 5) params."""
    _, workdir, _ = memorised
    copy = tmp_path_factory.mktemp("latest") / "run"
    shutil.copytree(workdir, copy)
    shutil.rmtree(copy / "checkpoints" / "best")
    return copy


@pytest.fixture(scope="module")
def predicted(memorised, latest_workdir, tmp_path_factory):
    """Rows that --mode=predict wrote for the 8 inputs, from the latest checkpoint."""
    config, _, _ = memorised
    return run_predict(config, latest_workdir, tmp_path_factory.mktemp("predict"))


def test_mode_predict_outputs_labels_and_rationales(predicted):
    assert [r["input"] for r in predicted] == [r["input"] for r in RECORDS]
    assert [r["label"] for r in predicted] == [r["label"] for r in RECORDS]
    assert [r["rationale"] for r in predicted] == [r["rationale"] for r in RECORDS]


def test_mode_predict_uses_the_best_checkpoint(memorised, tmp_path):
    """With a best checkpoint in the workdir, predict decodes with it (as serve does): its
    outputs are the test split's, which was scored with the best-validation params."""
    config, workdir, _ = memorised
    rows = run_predict(config, workdir, tmp_path)
    test_rows = read_rows(workdir / "predictions" / f"test_{BEST_STEP}.jsonl")
    assert [r["label"] for r in rows] == [r["label"] for r in test_rows]
    assert [r["label"] for r in rows] != [r["label"] for r in RECORDS]


def test_export_generates_the_same_outputs_in_transformers(
    memorised, latest_workdir, predicted, tmp_path
):
    """The exported HF model greedy-decodes exactly what we predict, for both tasks."""
    import torch
    import transformers

    config, _, _ = memorised
    export_dir = tmp_path / "hf"
    modes.run_export(config, latest_workdir, str(export_dir))
    hf_model = transformers.T5ForConditionalGeneration.from_pretrained(export_dir).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(export_dir)

    def hf_generate(prefix: str, max_len: int) -> list[str]:
        enc = hf_tok([prefix + r["input"] for r in RECORDS], return_tensors="pt", padding=True)
        with torch.no_grad():
            out = hf_model.generate(**enc, max_new_tokens=max_len, do_sample=False, num_beams=1)
        return [s.strip() for s in hf_tok.batch_decode(out, skip_special_tokens=True)]

    labels = hf_generate("predict: ", config.eval.gen_max_len)
    rationales = hf_generate("explain: ", config.eval.rationale_max_len)
    assert len(set(labels)) == 6 and all(labels)  # non-empty and input-dependent
    assert labels == [r["label"] for r in predicted]
    assert rationales == [r["rationale"] for r in predicted]
