"""--mode=export --export_format=ctranslate2: CTranslate2 greedy-decodes what we do (v1.0, v1.1)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from distill_jax import decode, modes
from distill_jax.errors import UserError
from distill_jax.model import hf_io
from distill_jax.tokenizer import Tokenizer
from tests import fixtures

MAX_LEN = 10


def export_config(model_dir):
    from configs import generic

    c = generic.get_config("runlocal")
    c.model.from_pretrained = str(model_dir)
    return c


@pytest.mark.slow
@pytest.mark.parametrize("version", ["v1.0", "v1.1"])
def test_ctranslate2_export_gives_our_greedy_outputs(version, tmp_path):
    ctranslate2 = pytest.importorskip("ctranslate2")
    model_dir = fixtures.write_random_t5(tmp_path, version, seed=3)
    out = tmp_path / "ct2"
    assert modes.run_export(export_config(model_dir), tmp_path / "wd", str(out), "ctranslate2")
    assert {"model.bin", "config.json", "tokenizer.json", "spiece.model"} <= {
        p.name for p in out.iterdir()
    }
    assert not list(tmp_path.glob(".ct2*"))  # no temporary directories left behind
    vocab = json.loads((out / "shared_vocabulary.json").read_text())

    cfg, params = hf_io.load_pretrained(str(model_dir))
    tokenizer = Tokenizer.from_dir(out)  # the exported tokenizer files load
    inputs = [r["input"] for r in fixtures.generic_records(6, offset=40)] + ["", "a b c"]
    ids = [tokenizer.encode("predict: " + x) + [tokenizer.eos_id] for x in inputs]
    tokens = np.zeros((len(ids), max(map(len, ids))), np.int32)  # [batch, length]
    for row, seq in enumerate(ids):
        tokens[row, : len(seq)] = seq
    ours = np.asarray(decode.greedy_decode(params, cfg, tokens, MAX_LEN))  # [batch, MAX_LEN]
    expected = []
    for row in ours:
        stop = np.flatnonzero(row == cfg.eos_token_id)
        expected.append([vocab[i] for i in row[: stop[0] if len(stop) else MAX_LEN]])

    translator = ctranslate2.Translator(str(out), device="cpu")
    results = translator.translate_batch(
        [[vocab[i] for i in seq] for seq in ids], beam_size=1, max_decoding_length=MAX_LEN
    )
    theirs = [r.hypotheses[0] for r in results]
    assert theirs == expected
    assert len({tuple(e) for e in expected}) > 1  # non-trivial outputs

    # A second export replaces the first; a directory that is not an export is refused.
    modes.run_export(export_config(model_dir), tmp_path / "wd", str(out), "ctranslate2")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(UserError, match="not an earlier CTranslate2 export"):
        modes.run_export(
            export_config(model_dir), tmp_path / "wd", str(tmp_path / "mine"), "ctranslate2"
        )


def test_ctranslate2_export_without_the_package_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # import ctranslate2 -> ImportError
    with pytest.raises(UserError, match="pip install ctranslate2"):
        modes.run_export(
            export_config(tmp_path), tmp_path / "wd", str(tmp_path / "out"), "ctranslate2"
        )
    assert not (tmp_path / "out").exists()
