"""distill-jax entry point.

    python launch.py --config=configs/<dataset>.py[:<preset>] [--config.<field>=<value>] \
        [--workdir=DIR] [--mode=train|eval|predict|data|export|teach|serve]

Rerunning the same command resumes from the workdir's latest checkpoint.
"""

from __future__ import annotations

import os
import pathlib
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from distill_jax.errors import UserError  # a plain ValueError: imports nothing heavy

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default: from the config).")
_MODE = flags.DEFINE_enum(
    "mode", "train", ["train", "eval", "predict", "data", "export", "teach", "serve"], "What to do."
)
_INPUT = flags.DEFINE_string(
    "input",
    None,
    "predict: JSON array or JSON Lines of {'input': ...}; teach: {input[, label]} records "
    "(batch_import: the Batch results file).",
)
_OUTPUT = flags.DEFINE_string("output", None, "predict / teach: output JSON Lines file.")
_EXPORT_DIR = flags.DEFINE_string("export_dir", None, "export: Hugging Face T5 directory to write.")
_EXPORT_FORMAT = flags.DEFINE_enum(
    "export_format", "hf", ["hf", "ctranslate2"], "export: Hugging Face T5 or CTranslate2 model."
)
_HOST = flags.DEFINE_string("host", "127.0.0.1", "serve: address to listen on.")
_PORT = flags.DEFINE_integer("port", 8000, "serve: port to listen on.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "Multi-host: 'host:port' of process 0."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")
flags.mark_flags_as_required(["config"])


def default_workdir(config) -> pathlib.Path:
    """Like the reference's run directory: one folder per dataset, teacher, setup and seed."""
    m = config.model
    model = pathlib.Path(m.from_pretrained).name if m.from_pretrained else f"{m.preset}-scratch"
    t = config.train
    name = (
        f"{config.data.llm}-{t.model_type}-{config.data.label_type}-{model}"
        f"-a{t.alpha}-b{t.batch_size}-lr{t.lr}-s{config.seed}"
    )
    return pathlib.Path("workdirs") / config.data.name / name


def init_distributed() -> None:
    """Joins the multi-process job: explicit flags (GPU/CPU clusters) or a TPU pod's own."""
    import jax

    if _COORDINATOR.value:
        if (jax.config.jax_platforms or "cpu") == "cpu" or os.environ.get("JAX_PLATFORMS") == "cpu":
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=_COORDINATOR.value,
            num_processes=_NUM_PROCESSES.value,
            process_id=_PROCESS_ID.value,
        )
    elif "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""):  # a multi-host TPU slice
        jax.distributed.initialize()
    elif int(os.environ.get("SLURM_NTASKS", "1")) > 1:  # srun: JAX reads the Slurm layout
        jax.distributed.initialize()


def load_config():
    """The --config ConfigDict; a config file that cannot be loaded is a UserError."""
    config = _CONFIG.value
    try:
        config.data  # noqa: B018 (ml_collections defers a load failure to the first access)
    except OSError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        raise UserError(f"--config: cannot load the config file: {lines[-1]}") from None
    return config


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing; an override of a config field that does not exist is one line on
    stderr and exit status 1 (ml_collections raises it as an AttributeError)."""
    try:
        return app.parse_flags_with_usage(argv)
    except (AttributeError, KeyError) as e:
        inner = e.args[0] if e.args and isinstance(e.args[0], BaseException) else e
        text = str(inner.args[0]) if inner.args else str(inner)  # KeyError's text, unquoted
        field = re.match(r"'([^']*)'", text)
        overrides = [arg.split("=", 1)[0] for arg in argv[1:] if arg.startswith("--config.")]
        culprit = next((o for o in overrides if field and field.group(1) in o.split(".")), None)
        if culprit is None:  # not an override: e.g. a bug in the config file itself
            raise
        detail = "; ".join(line.strip() for line in text.splitlines() if line.strip())
        print(f"error: {culprit}: no such config field ({detail})", file=sys.stderr, flush=True)
        sys.exit(1)


def run(argv) -> int:
    """Dispatches --mode; returns the process exit status."""
    del argv
    from distill_jax import modes
    from distill_jax.train import loop, setup

    # Orbax logs every save step at INFO; keep the console for our own progress.
    logging.get_absl_handler().addFilter(lambda record: "orbax" not in record.pathname)
    config = load_config()
    init_distributed()
    workdir = pathlib.Path(_WORKDIR.value) if _WORKDIR.value else default_workdir(config)
    mode = _MODE.value
    logging.info("mode=%s workdir=%s", mode, workdir)
    if mode in ("train", "eval", "predict", "serve"):
        setup.use_compilation_cache(config, workdir)
    if mode == "train":
        summary = loop.train_and_evaluate(config, workdir)
        if summary.get("preempted"):
            print(f"stopped at step {summary['step']} by SIGTERM; rerun to resume", flush=True)
            return loop.PREEMPTED_EXIT_CODE
        print(
            f"best valid accuracy {summary['best_valid_accuracy']:.4f} (step "
            f"{summary['best_step']}), test accuracy {summary['test_accuracy']:.4f}, "
            f"{summary['wall_time_s']:.0f}s; workdir {workdir}",
            flush=True,
        )
    elif mode == "data":
        for split, n in modes.run_data(config, workdir).items():
            print(f"{split}: {n} records -> {workdir / 'data' / (split + '.jsonl')}")
    elif mode == "eval":
        for split, acc in modes.run_eval(config, workdir).items():
            print(f"{split} accuracy: {acc:.4f}")
    elif mode == "predict":
        if not _INPUT.value:
            raise UserError("--mode=predict needs --input=FILE.")
        n = modes.run_predict(config, workdir, _INPUT.value, _OUTPUT.value or "")
        print(f"wrote {n} predictions to {_OUTPUT.value}")
    elif mode == "export":
        out = modes.run_export(config, workdir, _EXPORT_DIR.value or "", _EXPORT_FORMAT.value)
        kind = "a CTranslate2" if _EXPORT_FORMAT.value == "ctranslate2" else "a Hugging Face T5"
        print(f"exported {kind} model to {out}")
    elif mode == "teach":
        from distill_jax.teach import run as teach

        summary = teach.run_teach(config, workdir, _INPUT.value or "", _OUTPUT.value or "")
        if "kept" in summary:
            print(teach.format_summary(summary), flush=True)
    elif mode == "serve":
        from distill_jax import serve

        serve.run_serve(config, workdir, _HOST.value, _PORT.value)
    return 0


def main(argv) -> None:
    """absl main: user mistakes become one line on stderr and exit status 1."""
    try:
        code = run(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
