"""The one prediction path: texts -> prefixed token ids (`EvalSet`) -> global batches padded
to length buckets -> greedy decoding -> texts. Evaluation, `--mode=predict` and `--mode=serve`
all call `Predictor`. With several processes every process passes the same inputs, feeds its
own rows of each global batch, and gets all outputs back.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from distill_jax import decode, sharding
from distill_jax.data.eval_data import EvalSet, bucket_length
from distill_jax.model.config import T5Config
from distill_jax.tokenizer import Tokenizer


@dataclasses.dataclass(frozen=True)
class Settings:
    """Prefixing, truncation and decoding settings, as the config gives them."""

    model_type: str  # 'task_prefix' ('predict: '/'explain: ' prefixes) | 'standard' (none)
    max_input_length: int  # data.max_input_length: inputs truncated to this (EOS included)
    batch_size: int  # eval.batch_size: rows per global batch
    gen_max_len: int  # eval.gen_max_len: decoded label tokens
    rationale_max_len: int  # eval.rationale_max_len: decoded rationale tokens
    output_rationale: bool  # eval.output_rationale: also decode rationales by default

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> Settings:
        """The settings of `config` (data.max_input_length, train.model_type, eval.*)."""
        return cls(
            model_type=config.train.model_type,
            max_input_length=config.data.max_input_length,
            **{k: config.eval[k] for k in ("batch_size", "gen_max_len", "rationale_max_len")},
            output_rationale=bool(config.eval.output_rationale),
        )


class Predictor:
    """Greedy predictions of one model under `Settings`; `params` may be replaced per call (the
    trainer passes its current ones), inputs under a `cache_key` are tokenized once per run."""

    def __init__(
        self,
        params,
        model_cfg: T5Config,
        tokenizer: Tokenizer,
        mesh: Mesh,
        settings: Settings,
    ):
        self.params = params
        self.model_cfg = model_cfg
        self.tokenizer = tokenizer
        self.mesh = mesh
        self.settings = settings
        self.has_rationales = settings.model_type == "task_prefix"  # trained on `explain:` too
        self.label_task = "predict" if self.has_rationales else "standard"  # outputs labels
        self._rows = NamedSharding(mesh, P(sharding.BATCH_AXES, None))  # [rows, length] inputs
        self._row_multiple = sharding.batch_axis_size(mesh)  # global batches are a multiple
        self.decode_calls = 0
        # (rows, length, max_len) of every decode so far; a new one means a compilation.
        self.decoded_shapes: set[tuple[int, int, int]] = set()
        self.new_shape_calls = 0  # decode calls that met a shape for the first time
        self._cache: dict[tuple[str, str], EvalSet] = {}
        self._lock = threading.Lock()  # decode_calls from the server's batcher thread

    def max_len(self, task: str) -> int:
        """Decoded tokens for `task`: rationale_max_len for 'explain', else gen_max_len."""
        s = self.settings
        return s.rationale_max_len if task == "explain" else s.gen_max_len

    def encode(self, inputs: Sequence[str], task: str, cache_key: str | None = None) -> EvalSet:
        """Tokenized, prefixed `inputs`; kept under (cache_key, task) when a key is given."""
        cached = self._cache.get((cache_key, task))  # never stored under cache_key None
        if cached is not None and len(cached) == len(inputs):
            return cached
        evalset = EvalSet(
            list(inputs), self.tokenizer, task=task, max_input_length=self.settings.max_input_length
        )
        if cache_key is not None:
            self._cache[cache_key, task] = evalset
        return evalset

    def generate(
        self,
        evalset: EvalSet,
        task: str,
        *,
        params=None,
        batch_size: int | None = None,
    ) -> list[str]:
        """Greedy outputs of every input of `evalset`, in order (all processes get all)."""
        params = self.params if params is None else params
        max_len = self.max_len(task)
        outputs: list[str] = [""] * len(evalset)
        with sharding.activate(self.mesh):
            for batch in evalset.batches(
                batch_size or self.settings.batch_size,
                row_multiple=self._row_multiple,
                process_index=jax.process_index(),
                process_count=jax.process_count(),
            ):
                local = batch["encoder_input_tokens"]  # [local_rows, length]
                tokens = jax.make_array_from_process_local_data(self._rows, local)
                out = self._decode(params, tokens, max_len)  # [global_rows, max_len]
                out = np.asarray(multihost_utils.process_allgather(out, tiled=True))
                for row, index in enumerate(batch["global_indices"]):
                    if index >= 0:  # -1 marks filler rows
                        outputs[index] = self.tokenizer.decode(out[row])
        return outputs

    def _decode(self, params, tokens: jax.Array, max_len: int) -> jax.Array:
        shape = (tokens.shape[0], tokens.shape[1], max_len)
        with self._lock:
            self.decode_calls += 1
            self.new_shape_calls += shape not in self.decoded_shapes
            self.decoded_shapes.add(shape)
        return decode.greedy_decode(params, self.model_cfg, tokens, max_len)

    def predict(
        self,
        inputs: Sequence[str],
        *,
        rationale: bool | None = None,
        params=None,
        cache_key: str | None = None,
    ) -> list[dict[str, str]]:
        """Rows {'label'[, 'rationale']} for raw `inputs` (the task prefix is added here);
        `rationale` (default: settings.output_rationale) is ignored for 'standard' models."""
        if rationale is None:
            rationale = self.settings.output_rationale
        task = self.label_task
        labels = self.generate(self.encode(inputs, task, cache_key), task, params=params)
        rows = [{"label": y} for y in labels]
        if rationale and self.has_rationales:
            explain = self.encode(inputs, "explain", cache_key)
            for row, r in zip(rows, self.generate(explain, "explain", params=params), strict=True):
                row["rationale"] = r
        return rows

    # ---- fixed shapes for the server: compiled at start-up, never on a request's path -------

    def length_buckets(self) -> list[int]:
        """Every padded input length `bucket_length` can give for inputs up to max_input_length."""
        out = [bucket_length(1)]
        while out[-1] < self.settings.max_input_length:
            out.append(bucket_length(out[-1] + 1))
        return out

    def row_buckets(self, extra: Sequence[int] = ()) -> list[int]:
        """Batch sizes a server decodes: `extra` and batch_size, rounded up to the row multiple."""
        m = self._row_multiple
        top = -(-self.settings.batch_size // m) * m
        return sorted({min(top, -(-max(int(r), 1) // m) * m) for r in extra} | {top})

    def warm_up(self, row_buckets: Sequence[int], tasks: Sequence[str]) -> int:
        """Compiles greedy decoding for every (rows, length bucket, task); returns how many.
        Single-process only (serve.run_serve refuses several)."""
        lengths = self.length_buckets()
        shapes = [(r, n, self.max_len(t)) for t in tasks for r in row_buckets for n in lengths]
        with sharding.activate(self.mesh):
            for rows, length, max_len in shapes:
                tokens = np.zeros((rows, length), np.int32)  # [rows, length]
                tokens[:, 0] = self.tokenizer.eos_id  # lone EOS: decoding exits early
                tokens = jax.device_put(tokens, self._rows)
                out = decode.greedy_decode(self.params, self.model_cfg, tokens, max_len)
                jax.block_until_ready(out)
                self.decoded_shapes.add((rows, length, max_len))
        return len(shapes)
