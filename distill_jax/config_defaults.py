"""Config defaults: the reference's hyperparameters (run.py + HF Seq2SeqTrainer defaults), in the
package so that `distillm` and an installed copy work without the repository's `configs/` (a
top-level `configs` would shadow a user's own), whose files wrap `dataset_config(name, arg)`."""

from __future__ import annotations

import ml_collections

# Hub ids of the published checkpoints behind each preset name.
HUB_IDS = {
    **{f"t5-v1_1-{s}": f"google/t5-v1_1-{s}" for s in ("small", "base", "large", "xl", "xxl")},
    **{f"flan-t5-{s}": f"google/flan-t5-{s}" for s in ("small", "base", "large", "xl", "xxl")},
    **{f"t5-{s}": f"google-t5/t5-{s}" for s in ("small", "base", "large")},
}


def get_base_config() -> ml_collections.ConfigDict:
    """Every field the trainer reads, with the reference's defaults."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # the reference's --run: data subsampling, shuffling, init, dropout
    c.dtype = "auto"  # 'auto' (bf16 compute on GPU/TPU, float32 on CPU) | 'float32' | 'bfloat16'
    # JAX's persistent compilation cache in <workdir>/compile_cache, so a resume or a restarted
    # server loads its compiled programs instead of compiling again (JAX_COMPILATION_CACHE_DIR,
    # if set, is used instead)
    c.compilation_cache = True

    c.data = d = ml_collections.ConfigDict()
    d.name = "cqa"  # 'cqa' | 'esnli' | 'anli1' | 'svamp' | 'asdiv' | 'generic'
    d.dir = "datasets"  # root of the reference's dataset layout (datasets.zip unpacks here)
    d.llm = "palm"  # 'palm' | 'gpt' | 'generic' | None: whose rationales and labels
    d.label_type = "gt"  # 'gt' ground-truth labels | 'llm' the teacher's labels
    d.subsample = 1.0  # fraction of the training split kept (seeded by `seed`)
    d.max_input_length = 1024  # encoder tokens kept per input (the reference's default)
    d.max_target_length = 256  # decoder tokens kept per label or rationale (with EOS)
    d.train_file = ""  # generic only: path of the training records ('' = default location)
    d.valid_file = ""  # generic only: validation records ('' = default; split off if absent)
    d.test_file = ""  # generic only: test records ('' = default location)
    d.skip_bad_records = False  # generic only: skip malformed records instead of failing
    d.prepared_dir = ""  # where processed records are cached ('' = <workdir>/prepared)
    d.pack_input_length = 0  # encoder tokens per packed row (0 = chosen from the data)
    d.pack_target_length = 0  # decoder tokens per packed row (0 = chosen from the data)
    d.row_bucket = 0  # packed rows per micro-batch round up to this (0 = ~5% of the rows)

    c.model = m = ml_collections.ConfigDict()
    m.from_pretrained = "google/t5-v1_1-base"  # hub id (HF cache) or local HF dir; '' = scratch
    m.preset = "t5-v1_1-base"  # architecture when training from scratch
    m.vocab_size = 8000  # scratch only: size of the SentencePiece vocabulary trained on the data
    m.dropout_rate = ml_collections.FieldReference(None, field_type=float)  # None = model's own
    m.scan_layers = False  # scan over layers: faster compiles for deep models
    m.remat_policy = "none"  # 'none' | 'minimal' | 'full': trade compute for activation memory
    # 'xla' | 'dot_product' (jax.nn.dot_product_attention: cuDNN flash attention on GPU where it
    # applies, XLA elsewhere; no dropout on the attention probabilities, the other dropouts stay)
    m.attention = "xla"

    c.train = t = ml_collections.ConfigDict()
    t.model_type = "task_prefix"  # 'task_prefix' (labels + rationales) | 'standard' (labels)
    t.alpha = 0.5  # loss = alpha * label_loss + (1 - alpha) * rationale_loss
    t.batch_size = 64  # global examples per optimizer step
    t.grad_steps = 1  # micro-batches per optimizer step (gradient accumulation)
    t.max_steps = 10000  # optimizer steps
    t.eval_steps = 250  # validation every this many steps
    t.log_every = 50  # steps between rows of metrics.jsonl (each one a host sync)
    t.lr = 5e-5  # peak learning rate, linear decay to 0 at max_steps
    t.warmup_steps = 0  # linear warm-up steps (the reference uses none)
    t.optimizer = "adamw"  # 'adamw' | 'adafactor'
    t.weight_decay = 0.0  # AdamW weight decay (HF Trainer default 0)
    t.max_grad_norm = 1.0  # global-norm gradient clipping

    c.eval = e = ml_collections.ConfigDict()
    e.gen_max_len = 64  # greedy decoding length for labels
    e.rationale_max_len = 256  # greedy decoding length when output_rationale is set
    e.output_rationale = False  # also decode `explain:` rationales into the predictions
    e.batch_size = 64  # global eval batch size
    e.max_examples = 0  # cap per eval split (0 = all); handy for quick runs

    c.serve = sv = ml_collections.ConfigDict()
    sv.max_wait_ms = 5.0  # --mode=serve: a batch waits at most this long for more requests
    sv.row_buckets = (1, 8)  # batch sizes compiled besides eval.batch_size (for few requests)
    sv.max_body_bytes = 1_000_000  # POST /predict bodies over this get 400

    c.checkpoint = k = ml_collections.ConfigDict()
    k.every_steps = 1000  # save the train state + data iterator every this many steps
    k.keep = 2  # latest checkpoints kept (the best-by-validation one is kept separately)
    k.async_save = True  # write checkpoints in the background

    c.logging = lg = ml_collections.ConfigDict()
    lg.tensorboard = True  # write <workdir>/tensorboard event files
    lg.progress_bar = True  # tqdm progress bar on process 0

    c.mesh = ms = ml_collections.ConfigDict()
    ms.data = -1  # devices on the data-parallel axis (-1 takes the rest)
    ms.fsdp = 1  # devices sharding parameters and optimizer state (ZeRO-3)
    ms.tensor = 1  # devices splitting heads, mlp and vocab (tensor parallel)

    c.teacher = tc = ml_collections.ConfigDict()
    tc.backend = "openai"  # 'openai' (OpenAI-compatible HTTP) | 'hf' (local causal LM dir) |
    #                        'batch_export' | 'batch_import' (OpenAI Batch JSONL files)
    tc.base_url = "http://127.0.0.1:8000/v1"  # the server's OpenAI-compatible API root
    tc.model = ""  # model name sent to the server, or the local model directory for 'hf'
    tc.api = "chat"  # 'chat' (/chat/completions) | 'completions' (/completions)
    tc.api_key_env = "OPENAI_API_KEY"  # env var holding the key (read, never written)
    tc.prompt_file = ""  # prompt template file with {shots} {input} [{label}] ('' = built-in)
    tc.num_shots = 0  # >0: shots drawn from input records with a rationale (0 = built-in shots)
    tc.rationalize = False  # STaR-style: show the gold label and ask for the reasoning
    tc.num_samples = 1  # answers per input; with >1 the majority label wins
    tc.filter = "parsed"  # 'parsed' | 'gold' (also agree with gold) | 'majority' | 'none'
    tc.temperature = 0.0  # sampling temperature (0 = greedy); use > 0 with num_samples > 1
    tc.max_tokens = 256  # new tokens per answer
    tc.concurrency = 8  # requests in flight ('hf': prompts per generate batch)
    tc.max_retries = 6  # retries per request on 429, 5xx, timeouts and connection errors
    tc.timeout_s = 120.0  # seconds per HTTP request
    tc.backoff_s = 1.0  # first retry delay; doubles per retry, with jitter
    tc.backoff_max_s = 60.0  # longest retry delay (a server's Retry-After is honoured)
    tc.split = "train"  # reference datasets without --input: the split to teach
    return c


def apply_arg(c: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
    """Applies the comma-separated `:<arg>` tokens to `c` in place: preset names (e.g.
    `t5-v1_1-small`), `scratch` (random init) or `runlocal` (a tiny variant for CPU runs)."""
    for token in filter(None, (arg or "").split(",")):
        if token == "scratch":
            c.model.from_pretrained = ""
        elif token == "runlocal":
            apply_runlocal(c)
        else:  # a preset name; validated when the model is built, listing the valid ones
            c.model.preset = token
            c.model.from_pretrained = HUB_IDS.get(token, "") if c.model.from_pretrained else ""
    return c


def apply_runlocal(c: ml_collections.ConfigDict) -> None:
    """A tiny from-scratch model and a few steps: runs in seconds on a laptop CPU."""
    c.model.from_pretrained = ""
    c.model.preset = "t5-v1_1-tiny"
    c.model.vocab_size = 300
    c.data.max_input_length = 128
    c.data.max_target_length = 64
    c.data.row_bucket = 8  # one batch shape, so one compilation
    c.train.batch_size = 8
    c.train.max_steps = 6
    c.train.eval_steps = 3
    c.train.log_every = 1
    c.train.lr = 1e-3
    c.eval.gen_max_len = 16
    c.eval.rationale_max_len = 16
    c.eval.batch_size = 8
    c.eval.max_examples = 16
    c.checkpoint.every_steps = 3
    c.checkpoint.async_save = False
    c.logging.progress_bar = False


DATASETS = ("cqa", "esnli", "anli1", "svamp", "asdiv", "generic")


def dataset_config(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """The config of `configs/<name>.py:<arg>`: the base defaults (the reference's setup) plus,
    for the generic demo, a tiny T5 trained from scratch."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; use one of {DATASETS}")
    c = get_base_config()
    c.data.name = name
    if name == "generic":  # the bundled demo, from scratch unless a preset name is given
        c.data.llm = "generic"
        c.data.max_input_length = 128
        if not arg:  # the demo must run offline
            c.model.from_pretrained = ""
        c.model.preset = "t5-v1_1-tiny"
        c.model.vocab_size = 1000
        c.model.dropout_rate = 0.0
        # Measured on 2 cores (BENCHMARKS.md): batch 16 x 3600 steps reaches 83% test exact match
        # where batch 32 x 1800 (the same examples) reaches 74-77%; lr 3e-3 at batch 16 diverges
        # to a loss plateau, 2e-3 does not.
        c.train.batch_size = 16
        c.train.max_steps = 3600
        c.train.eval_steps = 1200
        c.train.lr = 2e-3
        c.train.warmup_steps = 100
        c.eval.gen_max_len = 96  # the longest demo labels are ~62 tokens (digits split)
        c.eval.batch_size = 128
        c.eval.max_examples = 0  # all 600: a tiny model decodes them in about a second
        c.checkpoint.every_steps = 1200
    return apply_arg(c, arg)
