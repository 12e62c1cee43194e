"""`--mode=export --export_format=ctranslate2`: our HF export, converted by CTranslate2's own
converter (which needs transformers and PyTorch) into `model.bin`, vocabulary and `config.json`
beside our tokenizer files, then renamed into place, so `out_dir` is never half-written."""

from __future__ import annotations

import os
import pathlib
import shutil

import jax

from distill_jax.errors import UserError
from distill_jax.model import hf_io
from distill_jax.model.config import T5Config


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
    `quantization`: CTranslate2's weight type (None keeps float32; also settable at load time)."""
    converter_cls = _converter()
    out = pathlib.Path(out_dir)
    work = hf_io.export_temp_dir(out, "model.bin", "CTranslate2 export")
    try:
        hf_dir, ct2_dir = work / "hf", work / "ct2"
        # Every process gathers the params; only process 0 writes the HF directory.
        hf_io.export_pretrained(hf_dir, cfg, params, tokenizer)
        if jax.process_index() != 0:
            return out
        # config.json is not copied: the converter writes its own.
        files = [name for name in hf_io.TOKENIZER_FILES if (hf_dir / name).is_file()]
        converter = converter_cls(str(hf_dir), copy_files=files)
        converter.convert(str(ct2_dir), quantization=quantization)
        os.chmod(ct2_dir, 0o755)
        hf_io.replace_dir(ct2_dir, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out
