"""HF checkpoint import/export against tiny random transformers T5 models (v1.0 and v1.1)."""

import json
import random
import shutil

import flax.linen as nn
import huggingface_hub.constants
import jax
import numpy as np
import pytest
import torch
import transformers
from flax import serialization, traverse_util
from safetensors.numpy import load_file, save_file

from distill_jax.errors import UserError
from distill_jax.model import hf_io
from distill_jax.model.t5 import T5
from distill_jax.tokenizer import Tokenizer

VOCAB = 176  # >= the test tokenizer's 60 pieces + 100 sentinels


def hf_config(version: str) -> transformers.T5Config:
    gated = version == "v1.1"
    return transformers.T5Config(
        vocab_size=VOCAB,
        d_model=16,
        d_kv=4,
        d_ff=24,
        num_layers=2,
        num_decoder_layers=3,  # different from the encoder to catch mixed-up stacks
        num_heads=2,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=20,
        feed_forward_proj="gated-gelu" if gated else "relu",
        tie_word_embeddings=not gated,
        decoder_start_token_id=0,
        dropout_rate=0.0,
    )


def make_model(version: str) -> transformers.T5ForConditionalGeneration:
    torch.manual_seed(0 if version == "v1.0" else 1)
    model = transformers.T5ForConditionalGeneration(hf_config(version)).eval()
    if version == "v1.1":  # a separate lm head, as in real v1.1 / Flan checkpoints
        model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, 16))
    with torch.no_grad():  # non-trivial norms, so a wrongly mapped scale shows up
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{version: (torch model, dir saved with save_pretrained)}."""
    out = {}
    for version in ("v1.0", "v1.1"):
        path = tmp_path_factory.mktemp(version)
        model = make_model(version)
        model.save_pretrained(path)
        out[version] = model, path
    return out


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(1, 6))) for _ in range(80)]
    texts = [" ".join(rng.choice(words) for _ in range(8)) for _ in range(200)]
    return Tokenizer.train(texts, 60, tmp_path_factory.mktemp("tok"))


TOKENS = np.array([[5, 9, 17, 3, 42, 1, 0, 0], [7, 8, 150, 11, 12, 13, 99, 1]], np.int32)
DECODER = np.array([[0, 4, 19, 33, 2], [0, 60, 61, 170, 5]], np.int32)


def torch_logits(model) -> np.ndarray:
    ids = torch.tensor(TOKENS, dtype=torch.long)
    with torch.no_grad():
        out = model(
            input_ids=ids,
            attention_mask=(ids != 0).long(),
            decoder_input_ids=torch.tensor(DECODER, dtype=torch.long),
        )
    return out.logits.numpy()


def our_logits(cfg, params) -> np.ndarray:
    return np.asarray(T5(cfg).apply({"params": params}, TOKENS, DECODER))


def state_dict(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def write_flax(model, path) -> None:
    """flax_model.msgpack in HF Flax naming: `.../q/kernel` [in, out], `embedding`, `weight`."""
    flat = {}
    for name, w in state_dict(model).items():
        if name.endswith("embed_tokens.weight"):
            continue  # HF Flax passes `shared` to both stacks; no separate copies
        keys = tuple(name.split(".")[:-1])
        if name == "shared.weight" or "relative_attention_bias" in name:
            flat[(*keys, "embedding")] = w
        elif "layer_norm" in name:
            flat[(*keys, "weight")] = w
        else:
            flat[(*keys, "kernel")] = w.T
    (path / "flax_model.msgpack").write_bytes(
        serialization.msgpack_serialize(traverse_util.unflatten_dict(flat))
    )


def assert_trees_equal(a, b):
    fa, fb = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=str(k))


def only(src, dst, *names):
    """A copy of checkpoint dir src holding config.json and the named files only."""
    dst.mkdir()
    for name in ("config.json", *names):
        shutil.copy(src / name, dst / name)
    return dst


def test_weight_formats_give_same_params(models, tmp_path):
    model, path = models["v1.1"]
    cfg, ref = hf_io.load_pretrained(str(path))
    assert cfg.num_decoder_layers == 3 and not cfg.tie_word_embeddings
    leaf = ref["encoder"]["layers_1"]["attention"]["out"]["kernel"]
    assert leaf.dtype == np.float32 and leaf.shape == (2, 4, 16)

    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, max_shard_size="20KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    assert len(list(sharded.glob("model-*.safetensors"))) > 2
    assert_trees_equal(hf_io.load_pretrained(str(sharded))[1], ref)

    bin_dir = only(path, tmp_path / "bin")
    torch.save(model.state_dict(), bin_dir / "pytorch_model.bin")
    assert_trees_equal(hf_io.load_pretrained(str(bin_dir))[1], ref)

    flax_dir = only(path, tmp_path / "flax")
    write_flax(model, flax_dir)
    assert_trees_equal(hf_io.load_pretrained(str(flax_dir))[1], ref)

    # bf16 weights are upcast: equal to the float32 ones rounded to bf16.
    bf16_dir = only(path, tmp_path / "bf16")
    bf16 = {k: v.to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
    import safetensors.torch

    safetensors.torch.save_file(bf16, bf16_dir / "model.safetensors", metadata={"format": "pt"})
    got = hf_io.load_pretrained(str(bf16_dir))[1]
    want = traverse_util.flatten_dict(ref)
    for k, v in traverse_util.flatten_dict(got).items():
        assert v.dtype == np.float32
        np.testing.assert_allclose(v, want[k], rtol=1e-2, atol=1e-2, err_msg=str(k))
        assert not np.array_equal(v, want[k]) or v.size < 4


@pytest.mark.parametrize("version", ["v1.0", "v1.1"])
def test_logits_match_pytorch(models, version):
    model, path = models[version]
    cfg, params = hf_io.load_pretrained(str(path))
    assert cfg.tie_word_embeddings == (version == "v1.0")
    assert ("logits_dense" in params["decoder"]) == (version == "v1.1")
    np.testing.assert_allclose(our_logits(cfg, params), torch_logits(model), atol=1e-4, rtol=1e-4)


def test_head_missing_from_untied_checkpoint_uses_shared(models, tmp_path):
    # transformers 5 saves a v1.1 model whose head is still tied to `shared` without lm_head.
    model, path = models["v1.1"]
    d = only(path, tmp_path / "nohead")
    weights = {k: v for k, v in state_dict(model).items() if k != "lm_head.weight"}
    save_file(weights, d / "model.safetensors", metadata={"format": "pt"})
    _, params = hf_io.load_pretrained(str(d))
    np.testing.assert_array_equal(
        params["decoder"]["logits_dense"]["kernel"], weights["shared.weight"].T
    )


@pytest.mark.parametrize("version", ["v1.0", "v1.1"])
def test_export_loads_in_transformers(models, tokenizer, version, tmp_path, capfd):
    model, path = models[version]
    cfg, params = hf_io.load_pretrained(str(path))
    out = tmp_path / "export"
    hf_io.export_pretrained(out, cfg, params, tokenizer)
    capfd.readouterr()
    reloaded = transformers.T5ForConditionalGeneration.from_pretrained(out).eval()
    captured = capfd.readouterr()
    log = (captured.out + captured.err).lower()
    for word in ("missing", "unexpected", "newly initialized", "mismatched"):
        assert word not in log, log
    np.testing.assert_allclose(torch_logits(reloaded), torch_logits(model), atol=1e-5)
    if version == "v1.0":
        assert reloaded.lm_head.weight.data_ptr() == reloaded.shared.weight.data_ptr()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    text = "abc defg hij </s> a b c"
    assert hf_tok(text, add_special_tokens=False).input_ids == tokenizer.encode(text)
    # Our own import of the export gives back the same params.
    assert_trees_equal(hf_io.load_pretrained(str(out))[1], params)
    names = set(load_file(out / "model.safetensors"))
    assert {"shared.weight", "lm_head.weight", "encoder.embed_tokens.weight"} <= names
    assert not list(tmp_path.glob(".export*"))  # no temp dirs left behind


def test_export_scanned_and_boxed_params(models, tokenizer, tmp_path):
    model, path = models["v1.1"]
    cfg, params = hf_io.load_pretrained(str(path), scan_layers=True, dropout_rate=0.2)
    assert cfg.scan_layers and cfg.dropout_rate == 0.2
    assert "layers" in params["encoder"] and "layers_0" not in params["encoder"]
    np.testing.assert_allclose(our_logits(cfg, params), torch_logits(model), atol=1e-4, rtol=1e-4)
    boxed = {"params": jax.tree.map(lambda x: nn.Partitioned(x, (None,) * x.ndim), params)}
    hf_io.export_pretrained(tmp_path / "out", cfg, boxed, tokenizer)
    reloaded = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "out")
    np.testing.assert_allclose(torch_logits(reloaded.eval()), torch_logits(model), atol=1e-5)
    # A second export replaces the first; a foreign non-empty dir is refused.
    hf_io.export_pretrained(tmp_path / "out", cfg, boxed, tokenizer)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(UserError, match="not an earlier export"):
        hf_io.export_pretrained(tmp_path / "mine", cfg, params, tokenizer)


def test_bad_checkpoint_dirs(models, tmp_path):
    _, path = models["v1.1"]
    with pytest.raises(UserError, match="config.json is missing"):
        hf_io.load_pretrained(str(tmp_path))

    no_weights = only(path, tmp_path / "no_weights")
    with pytest.raises(UserError, match="no weights found"):
        hf_io.load_pretrained(str(no_weights))

    bad_shape = only(path, tmp_path / "bad_shape", "model.safetensors")
    weights = load_file(bad_shape / "model.safetensors")
    name = "decoder.block.2.layer.1.EncDecAttention.k.weight"
    weights[name] = np.zeros((8, 15), np.float32)
    save_file(weights, bad_shape / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(UserError, match=rf"model.safetensors.*{name}.*\(8, 15\).*\(8, 16\)"):
        hf_io.load_pretrained(str(bad_shape))

    del weights[name]
    save_file(weights, bad_shape / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(UserError, match=f"{name}.*missing"):
        hf_io.load_pretrained(str(bad_shape))

    config = json.loads((path / "config.json").read_text())
    for field, value, match in [
        ("model_type", "bert", "model_type"),
        ("feed_forward_proj", "swish", "feed_forward_proj"),
    ]:
        d = only(path, tmp_path / value, "model.safetensors")
        (d / "config.json").write_text(json.dumps({**config, field: value}))
        with pytest.raises(UserError, match=rf"config.json.*{match}.*{value}"):
            hf_io.load_pretrained(str(d))
    (d / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="config.json: not valid JSON"):
        hf_io.load_pretrained(str(d))


def test_unexpected_weights_warn(models, tmp_path):
    model, path = models["v1.0"]
    d = only(path, tmp_path / "extra")
    save_file(
        {**state_dict(model), "encoder.extra.weight": np.zeros(3, np.float32)},
        d / "model.safetensors",
    )
    with pytest.warns(UserWarning, match="encoder.extra.weight"):
        hf_io.load_pretrained(str(d))


def test_resolve_hub_id_through_cache(models, tmp_path, monkeypatch):
    _, path = models["v1.0"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(UserError, match="neither a local directory nor .* HF cache"):
        hf_io.resolve_pretrained("org/not-there")

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--org--tiny"
    shutil.copytree(path, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    assert hf_io.resolve_pretrained("org/tiny") == repo / "snapshots" / commit
    assert_trees_equal(hf_io.load_pretrained("org/tiny")[1], hf_io.load_pretrained(str(path))[1])
    with pytest.raises(UserError, match="is a file"):
        hf_io.resolve_pretrained(str(path / "config.json"))


@pytest.mark.parametrize("index", ["[]", '{"weight_map": {"a": []}}', "{}", "not json"])
def test_a_malformed_weight_index_is_a_user_error_naming_it(tmp_path, index):
    (tmp_path / "model.safetensors.index.json").write_text(index)
    with pytest.raises(UserError, match="model.safetensors.index.json: not a valid weight index"):
        hf_io._read_weights(tmp_path)
