"""T5 tokenizer: SentencePiece (`spiece.model`) or `tokenizer.json`, and training a new vocab.

Ids follow T5: pad 0, eos 1, unk 2, the SentencePiece pieces, then 100 sentinels with
`<extra_id_0>` the largest id. Encoding matches transformers 5's `AutoTokenizer(dir)(text,
add_special_tokens=False).input_ids`: special tokens written in the text (e.g. e-SNLI's `</s>`
between premise and hypothesis) become their ids, the text between them is encoded on its own.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import os
import pathlib
import re
from collections.abc import Iterable, Sequence

import sentencepiece as spm
import tokenizers

from distill_jax.errors import UserError
from distill_jax.files import atomic_write

EXTRA_PIECES = tuple(f"<extra_id_{i}>" for i in range(100))  # <extra_id_0> has the top id
SPECIAL_PIECES = ("<pad>", "</s>", "<unk>")
# Unicode White_Space characters that SentencePiece's nmt_nfkc rules leave alone but the
# `tokenizers` whitespace split (used by transformers) treats as spaces.
_EXTRA_SPACES = str.maketrans({"\x85": " "})


def _set_t5_metaspace(tk: tokenizers.Tokenizer) -> None:
    """Sets the pre-tokenizer and decoder transformers 5's T5Tokenizer installs (spaces -> '▁')."""
    metaspace = dict(replacement="▁", prepend_scheme="always", split=True)
    pre = tokenizers.pre_tokenizers
    tk.pre_tokenizer = pre.Sequence([pre.WhitespaceSplit(), pre.Metaspace(**metaspace)])
    tk.decoder = tokenizers.decoders.Metaspace(**metaspace)


class Tokenizer:
    """A T5 tokenizer backed by SentencePiece or by a `tokenizers` tokenizer.json.

    Two backends on purpose: a `spiece.model` converts to `tokenizers` (as `save` does), but
    that encodes the demo's texts 4-5x slower (`benchmarks/tokenizer.py`, BENCHMARKS.md): at
    e-SNLI size, minutes. tests/test_tokenizer.py holds both to transformers' ids.
    """

    pad_id = 0
    eos_id = 1
    unk_id = 2

    def __init__(self, *, sp_model: bytes | None = None, tokenizer_json: str | None = None):
        """Builds from serialized `spiece.model` bytes or a tokenizer.json string (use from_dir)."""
        self._sp_model, self._tokenizer_json = sp_model, tokenizer_json
        self._sp: spm.SentencePieceProcessor | None = None
        self._tk: tokenizers.Tokenizer | None = None
        if sp_model is not None:
            self._sp = spm.SentencePieceProcessor(model_proto=sp_model)
            self._num_pieces = self._sp.get_piece_size()
            self.vocab_size = self._num_pieces + len(EXTRA_PIECES)
            self._special = {p: i for i, p in enumerate(SPECIAL_PIECES)}
            self._special.update({x: self.vocab_size - 1 - i for i, x in enumerate(EXTRA_PIECES)})
            # One group, so that re.split keeps the special tokens (at the odd indices).
            names = sorted(self._special, key=len, reverse=True)
            self._special_re = re.compile(f"({'|'.join(map(re.escape, names))})")
            id_to_piece = self._sp.id_to_piece
        else:
            self._tk = tokenizers.Tokenizer.from_str(tokenizer_json)
            if json.loads(tokenizer_json).get("model", {}).get("type") == "Unigram":
                # transformers 5 rebuilds T5 tokenizers with this pre-tokenizer whatever the file
                # says; the file's own normalizer is kept only for its precompiled charsmap.
                self._tk.normalizer = _precompiled_normalizer(json.loads(tokenizer_json))
                _set_t5_metaspace(self._tk)
            self.vocab_size = self._num_pieces = self._tk.get_vocab_size(with_added_tokens=True)
            id_to_piece = self._tk.id_to_token
        found = tuple(map(id_to_piece, range(3)))
        if found != SPECIAL_PIECES:
            raise UserError(
                f"tokenizer: ids 0, 1, 2 must be {SPECIAL_PIECES} as in T5, got {found}"
            )

    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> Tokenizer:
        """Loads `spiece.model` (preferred) or `tokenizer.json` from a directory."""
        path = pathlib.Path(path)
        sp, tj = path / "spiece.model", path / "tokenizer.json"
        file = sp if sp.is_file() else tj
        if not file.is_file():
            raise UserError(f"{path}: no tokenizer found (expected spiece.model or tokenizer.json)")
        try:
            if file is sp:
                return cls(sp_model=sp.read_bytes())
            return cls(tokenizer_json=tj.read_text(encoding="utf-8"))
        except UserError as e:
            raise UserError(f"{file}: {e}") from e
        except Exception as e:  # RuntimeError from sentencepiece, plain Exceptions from tokenizers
            why = "not a SentencePiece model" if file is sp else "cannot load tokenizer"
            raise UserError(f"{file}: {why} ({e})") from e

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, out_dir: str | os.PathLike) -> Tokenizer:
        """Trains a SentencePiece unigram vocab of `vocab_size` pieces (plus 100 extra ids; fewer
        when the texts are too few), deterministically, and saves it in out_dir."""
        special_re = re.compile(r"</s>|<pad>|<unk>|<extra_id_\d+>")
        # Special tokens written in the text are split out at encode time, so keep them out of
        # the vocab; skip empty lines, which SentencePiece would count as sentences.
        sentences = (s for s in (special_re.sub(" ", t).strip() for t in texts) if s)
        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=sentences,
                model_writer=model,
                model_type="unigram",
                vocab_size=vocab_size,
                hard_vocab_limit=False,
                pad_id=0,
                eos_id=1,
                unk_id=2,
                bos_id=-1,
                pad_piece="<pad>",
                eos_piece="</s>",
                unk_piece="<unk>",
                byte_fallback=False,
                character_coverage=1.0,
                # One piece per digit: ids, dates and codes are then copied digit by digit,
                # which small students learn far faster than arbitrary multi-digit pieces.
                split_digits=True,
                normalization_rule_name="nmt_nfkc",
                max_sentence_length=1 << 16,
                num_threads=1,  # one thread keeps the EM sums, hence the vocab, deterministic
                minloglevel=2,
            )
        except RuntimeError as e:
            raise UserError(
                f"training a SentencePiece vocab of size {vocab_size} failed: {e}"
            ) from e
        tok = cls(sp_model=model.getvalue())
        tok.save(out_dir)
        return tok

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without EOS."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, without EOS."""
        if self._tk is not None:
            return [e.ids for e in self._tk.encode_batch(list(texts), add_special_tokens=False)]
        parts = [self._special_re.split(t) for t in texts]  # text, special, text, ..., text
        plain = [p.translate(_EXTRA_SPACES) for ps in parts for p in ps[::2]]
        encoded = iter(self._sp.encode(plain))
        out = []
        for ps in parts:
            ids = next(encoded)
            for special in ps[1::2]:
                ids += [self._special[special], *next(encoded)]
            out.append(ids)
        return out

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids` up to the first EOS; pad, unk, sentinels and ids past the vocab skipped."""
        ids = itertools.takewhile(lambda i: i != self.eos_id, map(int, ids))
        kept = [i for i in ids if self.unk_id < i < self._num_pieces]
        if self._tk is not None:
            return self._tk.decode(kept, skip_special_tokens=True)
        return self._sp.decode(kept)

    def decode_batch(self, ids_2d: Iterable[Iterable[int]]) -> list[str]:
        """decode() of each row."""
        return [self.decode(row) for row in ids_2d]

    def save(self, out_dir: str | os.PathLike) -> None:
        """Writes spiece.model (if SentencePiece), tokenizer.json and the HF config files."""
        out = pathlib.Path(out_dir)
        extras = list(EXTRA_PIECES) if self._sp is not None else []
        if self._sp is not None:
            atomic_write(out / "spiece.model", self._sp_model)
        tokenizer_json = self._tokenizer_json or _tokenizer_json_from_sp(self._sp_model)
        atomic_write(out / "tokenizer.json", tokenizer_json)
        special = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
        config = {
            "tokenizer_class": "T5Tokenizer",
            **special,
            "extra_ids": len(extras),
            "additional_special_tokens": extras,
            "model_max_length": 1_000_000_000,
        }
        for name, obj in (
            ("tokenizer_config.json", config),
            ("special_tokens_map.json", {**special, "additional_special_tokens": extras}),
        ):
            atomic_write(out / name, json.dumps(obj, indent=2) + "\n")

    def __getstate__(self) -> dict:
        # Processors are C++ objects; pickling (e.g. into data-loader workers) carries the bytes.
        return {"sp_model": self._sp_model, "tokenizer_json": self._tokenizer_json}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)


def _precompiled_normalizer(tokenizer: dict) -> tokenizers.normalizers.Normalizer | None:
    """The Precompiled (SentencePiece charsmap) normalizer inside a tokenizer.json, if any."""
    norm = tokenizer.get("normalizer") or {}
    for n in norm.get("normalizers", []) if norm.get("type") == "Sequence" else [norm]:
        if n.get("type") == "Precompiled" and n.get("precompiled_charsmap"):
            charsmap = base64.b64decode(n["precompiled_charsmap"])
            return tokenizers.normalizers.Precompiled(charsmap)
    return None


def _tokenizer_json_from_sp(sp_model: bytes) -> str:
    """A tokenizer.json equal to what transformers 5 builds for a T5 spiece.model."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(sp_model)
    vocab = [(p.piece, p.score) for p in proto.pieces]
    vocab += [(x, 0.0) for x in reversed(EXTRA_PIECES)]
    tk = tokenizers.Tokenizer(tokenizers.models.Unigram(vocab, unk_id=2, byte_fallback=False))
    charsmap = proto.normalizer_spec.precompiled_charsmap
    if charsmap:
        tk.normalizer = tokenizers.normalizers.Precompiled(charsmap)
    _set_t5_metaspace(tk)
    specials = (*SPECIAL_PIECES, *reversed(EXTRA_PIECES))
    tk.add_special_tokens(
        [tokenizers.AddedToken(s, special=True, normalized=False) for s in specials]
    )
    tk.post_processor = tokenizers.processors.TemplateProcessing(
        single=["$A", "</s>"], pair=["$A", "</s>", "$B", "</s>"], special_tokens=[("</s>", 1)]
    )
    return tk.to_str()
