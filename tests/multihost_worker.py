"""One process of a 2-process CPU job (jax.distributed, gloo) that runs a single start-up step
of the trainer, for tests/test_multihost_setup.py.

    python tests/multihost_worker.py SCENARIO PORT PROCESS_ID TMP_DIR

Scenarios (each ends with a barrier both processes must reach, then prints `ok ...`):
  tokenizer-late  process 1 enters `setup.load_tokenizer` only once process 0 has written
                  spiece.model or is waiting in a collective (the interleaving that crashed
                  with `sync_global_devices name mismatch`);
  prepare         both prepare the records of one shared workdir at once and tokenize
                  them with TMP_DIR/tok; every call of `sources.load_splits` leaves a file
                  `calls/<process>-<n>` behind, every call of `features.tokenize_pairs` a
                  file `calls/tokenize<process>-<n>`;
  bad-records     the same with a malformed train file: both must fail, neither may hang.
"""

from __future__ import annotations

import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(scenario: str, port: int, pid: int, tmp: pathlib.Path) -> None:
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid)
    jax.devices()  # start the backend now: that waits for the other process, as launch.py does
    from jax.experimental import multihost_utils

    from distill_jax.data import features, sources, token_cache
    from distill_jax.errors import UserError
    from distill_jax.tokenizer import Tokenizer
    from distill_jax.train import setup
    from tests import fixtures
    from tests import launch_util as lu

    data_dir = tmp / "data"
    workdir = tmp / "work"
    config = lu.tiny_config(data_dir)
    if scenario == "tokenizer-late":
        in_collective = tmp / "process0-in-collective"
        if pid == 0:  # announce every broadcast before blocking in it
            original = multihost_utils.broadcast_one_to_all

            def announced(*args, **kwargs):
                in_collective.touch()
                return original(*args, **kwargs)

            multihost_utils.broadcast_one_to_all = announced
        else:
            spiece = workdir / setup.TOKENIZER_DIR / "spiece.model"
            deadline = time.time() + 60
            while not (spiece.exists() or in_collective.exists()) and time.time() < deadline:
                time.sleep(0.01)
        records = fixtures.generic_records(40)
        tokenizer = setup.load_tokenizer(config, workdir, records, None)
        result = tokenizer.vocab_size
    else:
        (tmp / "calls").mkdir(exist_ok=True)
        original_load = sources.load_splits

        def counted(*args, **kwargs):
            (tmp / "calls" / f"{pid}-{time.time_ns()}").touch()
            return original_load(*args, **kwargs)

        sources.load_splits = counted
        original_tokenize = features.tokenize_pairs

        def counted_tokenize(*args, **kwargs):
            (tmp / "calls" / f"tokenize{pid}-{time.time_ns()}").touch()
            return original_tokenize(*args, **kwargs)

        features.tokenize_pairs = counted_tokenize
        try:
            train = setup.load_records(config, workdir)["train"]
            tokenizer = Tokenizer.from_dir(tmp / "tok")
            pairs = token_cache.tokenize_pairs_cached(
                train, tokenizer, model_type="task_prefix", max_input_length=32,
                max_target_length=16,
            )  # fmt: skip
            result = f"{len(train)} {int(pairs.encoder.tokens.sum())}"
        except UserError as e:
            result = f"UserError: {e}"
    multihost_utils.sync_global_devices("scenario done")
    print(f"ok {result}", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), pathlib.Path(sys.argv[4]))
