"""A catalogue of bad inputs: each gets a clear message naming the file, line or field, a
non-zero exit without a traceback, and leaves nothing half-written behind.

Most cases call the library in-process (a `UserError` is exactly what launch.py prints as one
`error: ...` line with exit status 1); the command-line cases run launch.py itself to show
that path end to end, including errors raised while parsing flags. Config errors must come
before any compilation: the in-process train cases fail the test if the train step is built.
Hostile equation strings are scored through `metrics.equation_accuracy` and never executed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path

import pytest

from configs import cqa
from distill_jax import config_check, metrics, modes
from distill_jax.data import pipeline
from distill_jax.errors import UserError
from distill_jax.tokenizer import Tokenizer
from distill_jax.train import loop
from tests import fixtures
from tests import launch_util as lu

GOOD = fixtures.generic_records(12)


def jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def leftovers(workdir: Path) -> list[Path]:
    """Temporary files or directories a failed run must not leave behind."""
    patterns = ("*.tmp", "*incomplete*", "*.orbax-checkpoint-tmp*")
    return [p for pattern in patterns for p in workdir.rglob(pattern)] if workdir.exists() else []


def generic_config(tmp_path: Path, train_file: Path, **overrides):
    good = tmp_path / "good.json"
    good.write_text(jsonl(GOOD))
    return lu.tiny_config(
        tmp_path,
        data__train_file=str(train_file),
        data__valid_file=str(good),
        data__test_file=str(good),
        **overrides,
    )


# ---- records: (file contents, substrings the message must contain besides the file name) ---

RECORD_CASES: dict[str, tuple[Callable[[], str | bytes], list[str]]] = {
    "truncated-json": (
        lambda: jsonl(GOOD[:5]) + json.dumps(GOOD[5])[:25],
        ["line 6", "invalid JSON", "truncated"],
    ),
    "wrong-type": (
        lambda: jsonl([*GOOD[:3], {**GOOD[3], "label": 5}, *GOOD[4:]]),
        ["line 4", "record 4", "field 'label' must be a string", "number"],
    ),
    "missing-field": (
        lambda: jsonl([*GOOD[:2], {"input": "x", "label": "y"}, *GOOD[3:]]),
        ["line 3", "missing field 'rationale'"],
    ),
    "empty-field": (
        lambda: jsonl([*GOOD[:2], {**GOOD[2], "rationale": "  "}, *GOOD[3:]]),
        ["line 3", "field 'rationale' is empty"],
    ),
    "non-utf8": (
        lambda: jsonl(GOOD[:4]).encode() + '{"input": "café"}\n'.encode("latin-1"),
        ["line 5", "not valid UTF-8", "0xe9"],
    ),
    "huge-line": (  # 20 MB of garbage on one line: an error at once, no hang or blow-up
        lambda: jsonl(GOOD[:3]) + "x" * 20_000_000 + "\n" + jsonl(GOOD[3:]),
        ["line 4", "invalid JSON"],
    ),
    "nesting-bomb": (
        lambda: jsonl(GOOD[:3]) + "[" * 100_000 + "\n" + jsonl(GOOD[3:]),
        ["line 4", "nesting too deep"],
    ),
    "not-an-object": (
        lambda: json.dumps([*GOOD[:2], 7, *GOOD[2:]], indent=1),
        ["record 3", "the record is a JSON number"],
    ),
    "no-records": (lambda: "[]", ["no valid records"]),
}


@pytest.mark.parametrize("case", RECORD_CASES)
def test_bad_records_are_reported_by_file_and_line(tmp_path, case):
    make, expected = RECORD_CASES[case]
    content = make()
    path = tmp_path / "bad.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    workdir = tmp_path / "work"
    start = time.perf_counter()
    with pytest.raises(UserError) as err:
        modes.run_data(generic_config(tmp_path, path), workdir)
    assert time.perf_counter() - start < 30
    message = str(err.value)
    for part in [str(path), *expected]:
        assert part in message, message
    assert not (workdir / "data").exists() and not leftovers(workdir)


def test_missing_file_is_named(tmp_path):
    workdir = tmp_path / "work"
    with pytest.raises(UserError, match="nope.json: train file not found"):
        modes.run_data(generic_config(tmp_path, tmp_path / "nope.json"), workdir)
    assert not leftovers(workdir)


# ---- teacher (LLM) outputs of a reference dataset: CQA with PaLM ------------------------------

LLM_CASES: dict[str, tuple[Callable[[list], object], list[str]]] = {
    "unparseable-output": (
        lambda outs: [*outs[:2], "I would say the bank.", *outs[3:]],
        ["output 2", "cannot parse the palm output", "So the answer is"],
    ),
    "output-not-a-string": (
        lambda outs: [*outs[:3], 42, *outs[4:]],
        ["output 3", "expected a string", "number"],
    ),
    "outputs-not-a-list": (lambda outs: {"outputs": outs}, ["expected a JSON list"]),
    "outputs-missing-one": (lambda outs: outs[:-1], ["9 palm outputs", "10 train examples"]),
    "truncated-outputs": (lambda outs: json.dumps(outs)[:-20], ["line 1", "invalid JSON"]),
}


@pytest.mark.parametrize("case", LLM_CASES)
def test_bad_llm_outputs_are_reported_by_file_and_output(tmp_path, case):
    change, expected = LLM_CASES[case]
    root = fixtures.write_reference_fixtures(tmp_path / "datasets", names=["cqa"])
    path = root / "cqa" / "llm" / "train_CoT_0.json"
    changed = change(json.loads(path.read_text()))
    path.write_text(changed if isinstance(changed, str) else json.dumps(changed))
    config = cqa.get_config()
    config.data.dir = str(root)
    workdir = tmp_path / "work"
    with pytest.raises(UserError) as err:
        modes.run_data(config, workdir)
    message = str(err.value)
    for part in [str(path), *expected]:
        assert part in message, message
    assert not (workdir / "data").exists() and not leftovers(workdir)


# ---- impossible configs: rejected in train mode before anything is compiled ---------------

CONFIG_CASES: dict[str, tuple[dict, list[str]]] = {
    "alpha-above-1": ({"train__alpha": 1.5}, ["train.alpha=1.5", "[0, 1]"]),
    "negative-alpha": ({"train__alpha": -0.1}, ["train.alpha=-0.1"]),
    # A batch of 6 on 4 data-parallel devices is fine (see the test below); grad_steps is not.
    "batch-not-divisible-by-grad-steps": (
        {"train__batch_size": 6, "train__grad_steps": 4},
        ["train.batch_size=6", "train.grad_steps=4"],
    ),
    "zero-steps": ({"train__max_steps": 0}, ["train.max_steps=0"]),
    "unknown-dataset": ({"data__name": "imagenet"}, ["data.name='imagenet'", "cqa"]),
    "unknown-preset": ({"model__preset": "t5-v1_1-huge"}, ["t5-v1_1-huge", "t5-v1_1-small"]),
    "unknown-optimizer": ({"train__optimizer": "sgd"}, ["train.optimizer='sgd'"]),
    "unknown-model-type": ({"train__model_type": "both"}, ["train.model_type='both'"]),
    "unknown-dtype": ({"dtype": "float64"}, ["dtype='float64'"]),
    "zero-subsample": ({"data__subsample": 0.0}, ["data.subsample=0.0"]),
    "llm-labels-without-an-llm": ({"data__label_type": "llm", "data__llm": None}, ["data.llm"]),
    "mesh-not-matching-devices": ({"mesh__data": 3}, ["3*1*1 = 3", "4 available devices"]),
    "mesh-not-dividing-devices": (
        {"mesh__data": -1, "mesh__tensor": 3},
        ["4 devices", "not divisible", "3"],
    ),
    "two-free-mesh-axes": ({"mesh__data": -1, "mesh__fsdp": -1}, ["at most one may be -1"]),
    "zero-mesh-axis": ({"mesh__tensor": 0}, ["mesh.tensor=0"]),
    "missing-pretrained-model": ({"model__from_pretrained": "{tmp}/no_model"}, ["no_model"]),
}


@pytest.fixture
def no_compile(monkeypatch):
    """Fails the test if the train step gets built: config errors must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("the train step was built before the config error was reported")

    monkeypatch.setattr(loop, "jit_train_step", refuse)


@pytest.mark.parametrize("case", CONFIG_CASES)
def test_impossible_configs_fail_before_compiling(tmp_path, no_compile, case):
    overrides, expected = CONFIG_CASES[case]
    overrides = {
        k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in overrides.items()
    }
    config = lu.tiny_config(fixtures.write_generic_fixture(tmp_path / "data"), **overrides)
    workdir = tmp_path / "work"
    with pytest.raises(UserError) as err:
        loop.train_and_evaluate(config, workdir)
    message = str(err.value)
    for part in expected:
        assert part in message, message
    assert not leftovers(workdir)


def test_batch_not_divisible_by_devices_is_legitimate(tmp_path):
    """6 examples on a 4-way data axis: packing pads the rows to a multiple of 4 and keeps
    all 6 examples, so this is no error (only batch % processes and % grad_steps are)."""
    records = fixtures.generic_records(24)
    config = lu.tiny_config(tmp_path, train__batch_size=6)
    config_check.validate(config)
    texts = [r[k] for r in records for k in ("input", "label", "rationale")]
    tokenizer = Tokenizer.train(texts, 300, tmp_path / "tok")
    batches = pipeline.TrainIterator(
        records,
        tokenizer,
        model_type="task_prefix",
        batch_size=6,
        grad_steps=1,
        max_input_length=48,
        max_target_length=24,
        seed=0,
        row_multiple=4,
        prefetch=0,
    )
    assert len(batches.examples_at(0)) == 6
    batch = next(batches)
    assert batch["encoder_input_tokens"].shape[1] % 4 == 0
    # 6 examples x (label + rationale): 12 target segments in the global batch.
    seg = batch["decoder_segment_ids"][0]  # [rows, pack_target_length]
    assert len({(r, seg[r, c]) for r, c in zip(*seg.nonzero(), strict=True)}) == 12


@pytest.mark.slow
def test_checkpoint_of_another_model_is_a_clear_error(tmp_path_factory, tmp_path, no_compile):
    """Resuming a workdir with a different architecture: one message, checkpoints untouched."""
    data_dir, ref = lu.reference_run(tmp_path_factory)
    workdir = lu.copy_workdir(ref, tmp_path / "run")
    config = lu.tiny_config(data_dir, model__preset="t5-v1_1-small")
    with pytest.raises(UserError) as err:
        loop.train_and_evaluate(config, workdir)
    message = str(err.value)
    assert "checkpoint step 6" in message and "different model config" in message, message
    steps = sorted(p.name for p in (workdir / "checkpoints" / "latest").iterdir())
    assert steps == ["4", "6"]  # nothing set aside: no step restores, so none is "incomplete"


# ---- a mesh that does not fit the model's dimensions ---------------------------------------


@pytest.mark.parametrize(
    "mesh, model, expected",
    [  # 4 devices; the small preset has 6 heads, the tiny one 4
        ({"data": 1, "tensor": 4}, {"preset": "t5-v1_1-small"}, ["mesh.tensor=4", "num_heads = 6"]),
        ({"data": 1, "fsdp": 4}, {"d_model": 130}, ["mesh.fsdp=4", "d_model = 130"]),
        ({"data": 2, "tensor": 2}, {"d_ff": 255}, ["mesh.tensor=2", "d_ff = 255"]),
    ],
)
def test_mesh_must_divide_the_sharded_model_dims(tmp_path, mesh, model, expected):
    import dataclasses

    from distill_jax.model.config import get_preset

    config = lu.tiny_config(tmp_path, **{f"mesh__{k}": v for k, v in mesh.items()})
    config_check.validate(config)  # the mesh fits the devices
    preset = model.pop("preset", "t5-v1_1-tiny")
    model_cfg = dataclasses.replace(get_preset(preset), **model)
    with pytest.raises(UserError) as err:
        config_check.validate_model(config, model_cfg)
    for part in expected:
        assert part in str(err.value), str(err.value)
    config_check.validate_model(config, get_preset("t5-v1_1-tiny"))  # 4 heads: fine


@pytest.mark.slow
def test_tensor_axis_of_3_on_a_4_head_model_is_one_line(tmp_path):
    """The issue's case: --config.mesh.tensor=3 with 4 heads on 3 devices (was a traceback)."""
    data_dir = fixtures.write_generic_fixture(tmp_path / "data")
    args = [*lu.tiny_flags(data_dir, tmp_path / "work"), "--config.mesh.data=1"]
    result = lu.run_launch([*args, "--config.mesh.tensor=3"], devices=3)
    assert result.returncode == 1, result.describe()
    assert "Traceback" not in result.stderr, result.describe()
    for part in ["error: config field mesh.tensor=3", "num_heads = 4", "divisible by 3"]:
        assert part in result.stderr, result.describe()


# ---- the real command line: exit status 1, one `error:` line, no traceback ------------------

CLI_CASES: dict[str, tuple[list[str], list[str]]] = {
    "data-truncated-json": (
        ["--mode=data", "--config.data.train_file={tmp}/trunc.json"],
        ["trunc.json, line 6", "truncated"],
    ),
    "train-mesh-mismatch": (["--config.mesh.data=3"], ["4 available devices"]),
    "unknown-config-field": (
        ["--config.train.alpah=0.3"],
        ["--config.train.alpah: no such config field", 'Did you mean "alpha"'],
    ),
    "wrong-value-type": (["--config.train.batch_size=abc"], ["train.batch_size=abc"]),
    "missing-config-file": (
        ["--config=configs/nope.py"],
        ["cannot load the config file", "configs/nope.py"],
    ),
    "predict-non-utf8-input": (
        ["--mode=predict", "--input={tmp}/latin1.json", "--output={tmp}/out.jsonl"],
        ["latin1.json, line 1", "not valid UTF-8"],
    ),
    "eval-without-a-checkpoint": (["--mode=eval"], ["no trained tokenizer", "train in this"]),
}


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory):
    """Every CLI case run once, two at a time (each process imports JAX: seconds)."""
    tmp = tmp_path_factory.mktemp("cli")
    good = tmp / "good.json"
    good.write_text(jsonl(GOOD))
    (tmp / "trunc.json").write_text(jsonl(GOOD[:5]) + json.dumps(GOOD[5])[:25])
    (tmp / "latin1.json").write_bytes('{"input": "café"}\n'.encode("latin-1"))
    data = [f"--config.data.{s}_file={good}" for s in ("train", "valid", "test")]

    def run(case):
        extra = [a.format(tmp=tmp) for a in CLI_CASES[case][0]]
        if not any(a.startswith("--config=") for a in extra):
            extra = ["--config=configs/generic.py:runlocal", *data, *extra]
        return lu.run_launch([f"--workdir={tmp / case}", *extra], timeout=300)

    with futures.ThreadPoolExecutor(2) as pool:
        results = dict(zip(CLI_CASES, pool.map(run, CLI_CASES), strict=True))
    return tmp, results


@pytest.mark.slow
@pytest.mark.parametrize("case", CLI_CASES)
def test_command_line_errors_are_one_clean_line(cli_results, case):
    tmp, results = cli_results
    result = results[case]
    assert result.returncode == 1, result.describe()
    assert "Traceback" not in result.stderr, result.describe()
    for part in CLI_CASES[case][1]:
        assert part in result.stderr, result.describe()
    assert not leftovers(tmp / case)
    assert not (tmp / case / "data").exists() and not (tmp / "out.jsonl").exists()


# ---- equations are parsed, never executed ---------------------------------------------------

CANARY: list[int] = []  # a hostile string that ran would append to it

HOSTILE = [
    "__import__('os').system('touch PWNED')",
    "open('PWNED', 'w').write('x')",
    "__import__('tests.test_bad_input').test_bad_input.CANARY.append(1)",
    "().__class__.__bases__[0].__subclasses__()",
    "(lambda: 1)()",
    "9**9**9**9",
    "10**10**10",
    "2**100000000",
    "[1] * 10**9",
    "f'{1}'",
    "1e308 * 10",
    "9" * 5000,
    "1" + "*1" * 50_000,
    "(" * 100_000 + "1" + ")" * 100_000,
    "-" * 1_000_000 + "1",
]


def test_hostile_equations_are_scored_wrong_without_running(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    for expr in HOSTILE:
        assert metrics.equation_accuracy([expr], ["2"]) == 0.0, expr
        assert metrics.equation_accuracy(["2"], [expr]) == 0.0, expr  # on the label side too
        assert metrics.accuracy([expr], ["2"], "svamp") == 0.0, expr
    assert time.perf_counter() - start < 5  # bounded work: no exponent or length bomb ran
    assert not CANARY and not any(tmp_path.iterdir())
    # The evaluator does evaluate honest equations (so the zeros above mean "rejected").
    assert metrics.equation_accuracy(["(3 + 4) * 2", "10 / 4"], ["14", "2.5"]) == 1.0
