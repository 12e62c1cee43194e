"""`--mode=export --export_format=ctranslate2`: a self-contained CTranslate2 model directory.

Our Hugging Face export (`hf_io.export_pretrained`) goes to a temporary directory, CTranslate2's
own converter (`ctranslate2.converters.TransformersConverter`, which loads it with
`transformers` and PyTorch) turns it into `model.bin` + vocabulary + `config.json`, and the
tokenizer files are copied next to them; the result is renamed into place, so an interrupted
export leaves nothing half-written at `out_dir`.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile

from distill_jax.errors import UserError
from distill_jax.model import hf_io
from distill_jax.model.config import T5Config

# Tokenizer files of our HF export that a CTranslate2 user needs to tokenize (config.json is
# not among them: the converter writes its own).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "spiece.model",
)


def _converter():
    """CTranslate2's TransformersConverter, or a UserError naming what to install."""
    missing = []
    for name in ("ctranslate2", "transformers", "torch"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise UserError(
            f"--export_format=ctranslate2 needs {', '.join(missing)}: pip install ctranslate2 "
            "(the converter also needs transformers and a CPU torch: pip install -r "
            "requirements-test.txt)."
        )
    from ctranslate2.converters import TransformersConverter

    return TransformersConverter


def export_ctranslate2(
    out_dir: str | os.PathLike, cfg: T5Config, params, tokenizer, quantization: str | None = None
) -> pathlib.Path:
    """Writes a CTranslate2 model of `params` to `out_dir` (every process calls; 0 writes).

    `quantization` is CTranslate2's weight type (None keeps float32; 'int8' etc. also work at
    load time through `compute_type`).
    """
    import jax

    converter_cls = _converter()
    out = pathlib.Path(out_dir)
    if jax.process_index() == 0 and out.exists():
        earlier = (out / "model.bin").is_file()
        if not out.is_dir() or (any(out.iterdir()) and not earlier):
            raise UserError(
                f"export_dir {out}: exists and is not an earlier CTranslate2 export; pick a new one"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    work = pathlib.Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        hf_dir, ct2_dir = work / "hf", work / "ct2"
        # Every process gathers the params; only process 0 writes the HF directory.
        hf_io.export_pretrained(hf_dir, cfg, params, tokenizer)
        if jax.process_index() != 0:
            return out
        files = [name for name in TOKENIZER_FILES if (hf_dir / name).is_file()]
        converter = converter_cls(str(hf_dir), copy_files=files)
        converter.convert(str(ct2_dir), quantization=quantization)
        os.chmod(ct2_dir, 0o755)
        hf_io.replace_dir(ct2_dir, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out
