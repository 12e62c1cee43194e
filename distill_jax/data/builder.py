"""Prepare a dataset's processed records once into a versioned ArrayRecord data dir (TFDS).

`prepare(records_fn, fingerprint, out_dir, name=...)` runs `records_fn()` (raw files -> records
per split, see `sources.load_splits`) at most once per fingerprint, writes every split with a
TFDS `GeneratorBasedBuilder` in the ArrayRecord file format and returns random-access record
sequences read back through `tfds`'s data sources. TensorFlow is not needed: TFDS writes and
reads ArrayRecord files with `array_record` alone (checked with tensorflow-datasets 4.9.10).

Layout: `<out_dir>/distill_records/<name>_<hash>/<PROCESSING_VERSION>/`
(`dataset_info.json`, `features.json`, `distill_records-<split>.array_record-*`), and
`<out_dir>/tokens/<name>_<hash>/` for the token ids derived from them (`token_cache.py`).
`<hash>` is a digest of `fingerprint` (e.g. the data config and `file_fingerprint(raw
files)`) and `PROCESSING_VERSION`, so changed raw files, changed options or changed
processing give a new directory and a rebuild; an unchanged fingerprint reuses the prepared
files without calling `records_fn`. Old directories are left in place (another run may still
use them).

Each example stores its record as one JSON text feature, so optional fields (`llm_label`) round
trip exactly. Example order is kept (`disable_shuffling`): split index i is record i.

Atomic: TFDS generates into `incomplete.*` next to the final directory and renames it when
complete; if `records_fn` or writing fails the temporary directory is removed. In a multi-host
job process 0 alone checks and prepares, and the others wait for it and read its files (the
data dir must be on a shared file system). Separate jobs sharing a data dir may still race:
the loser's rename fails, and it reads the winner's files (same fingerprint, same content).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds

from distill_jax import multihost
from distill_jax.errors import UserError

# Bump when the way records are produced or stored changes: every dataset is then rebuilt.
PROCESSING_VERSION = "1.1.0"  # 1.1.0: generic files keep their llm_label
BUILDER_NAME = "distill_records"
_HASH_CHARS = 12

Records = dict[str, list[dict[str, Any]]]


class RecordSource(Sequence):
    """Random-access, read-only view of one prepared split: `src[i]` is record i (a dict).

    Also usable as a grain data source (`__len__`, `__getitem__`); `__getitems__` reads a
    batch of records at once.
    """

    def __init__(self, data_source: Any, split: str, cache_dir: Path | None = None):
        self._source = data_source  # tfds ArrayRecordDataSource (None for an empty split)
        self.split = split
        self.cache_dir = cache_dir  # where derived data (token ids, token_cache.py) is kept

    def __len__(self) -> int:
        return 0 if self._source is None else len(self._source)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.__getitems__(range(len(self))[index])
        n = len(self)
        i = index + n if index < 0 else index
        if not 0 <= i < n:
            raise IndexError(f"record {index} out of range for split {self.split!r} ({n})")
        return _decode(self._source[i])

    def __getitems__(self, indices: Iterable[int]) -> list[dict[str, Any]]:
        indices = list(indices)
        if not indices:
            return []
        return [_decode(x) for x in self._source.__getitems__(indices)]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        chunk = 4096  # batched reads are much faster than one record at a time
        for start in range(0, len(self), chunk):
            yield from self.__getitems__(range(start, min(start + chunk, len(self))))

    def __repr__(self) -> str:
        return f"RecordSource(split={self.split!r}, len={len(self)})"


def _decode(example: Mapping[str, Any]) -> dict[str, Any]:
    raw = example["record"]
    return json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)


class DistillRecords(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """TFDS builder of processed distillation records; one BuilderConfig per dataset variant.

    The records come from a callable set on the instance (`records_fn`) rather than from
    downloads: the raw files are parsed by `distill_jax.data.sources`.
    """

    VERSION = tfds.core.Version(PROCESSING_VERSION)
    RELEASE_NOTES = {PROCESSING_VERSION: "Records as JSON text, original order."}

    records_fn: Callable[[], Records] | None = None

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> None:
        # No checksums file next to the code. TFDS 4.9.10's default looks one up through the
        # `importlib_resources` backport, which is only installed on Python < 3.9.
        return None

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Processed Distilling Step-by-Step records (input, label, rationale).",
            features=tfds.features.FeaturesDict({"record": tfds.features.Text()}),
            metadata=tfds.core.MetadataDict(),  # {'split_sizes': {split: n}}, empty ones too
            disable_shuffling=True,  # keep the source order: eval outputs line up with inputs
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download: records come from `records_fn`
        if self.records_fn is None:
            raise RuntimeError("DistillRecords.records_fn must be set before preparing")
        splits = self.records_fn()
        if not isinstance(splits, Mapping) or not splits:
            raise UserError(f"records_fn must return a dict split -> records, got {type(splits)}")
        splits = {split: list(recs) for split, recs in splits.items()}
        self.info.metadata["split_sizes"] = {split: len(recs) for split, recs in splits.items()}
        # TFDS refuses empty splits; they are recorded in the metadata and read back as empty.
        return {
            split: self._generate_examples(split, recs) for split, recs in splits.items() if recs
        }

    def _generate_examples(self, split: str, records: Iterable[Mapping[str, Any]]):
        for i, record in enumerate(records):
            try:
                text = json.dumps(dict(record), ensure_ascii=False, sort_keys=True)
            except (TypeError, ValueError) as e:
                raise UserError(f"split {split!r} record {i}: not JSON-serialisable: {e}") from e
            yield i, {"record": text}


def fingerprint_hash(fingerprint: Mapping[str, Any]) -> str:
    """Short stable digest of `fingerprint` (JSON-serialisable) and `PROCESSING_VERSION`."""
    try:
        blob = json.dumps(
            {"fingerprint": fingerprint, "processing_version": PROCESSING_VERSION},
            sort_keys=True,
            default=str,
        )
    except (TypeError, ValueError) as e:
        raise UserError(f"dataset fingerprint is not JSON-serialisable: {e}") from e
    return hashlib.sha256(blob.encode()).hexdigest()[:_HASH_CHARS]


def file_fingerprint(paths: Iterable[str | os.PathLike]) -> dict[str, Any]:
    """Content fingerprint of raw files: {path: {'size', 'sha256'}}; directories are walked.

    Keys are the paths as given (pass paths relative to the data dir to make the fingerprint
    independent of where the data lives). Content hashes, not mtimes: touching or copying a
    file does not force a rebuild, any edit does. Missing paths are recorded as 'missing'.
    """
    out: dict[str, Any] = {}
    for path in map(Path, paths):
        if not path.exists():
            out[str(path)] = "missing"
            continue
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            digest = hashlib.sha256()
            with open(f, "rb") as fh:
                while block := fh.read(1 << 20):
                    digest.update(block)
            out[str(f)] = {"size": f.stat().st_size, "sha256": digest.hexdigest()}
    return out


def prepared_path(out_dir: str | os.PathLike, name: str, fingerprint: Mapping[str, Any]) -> Path:
    """Directory that `prepare` writes for this name and fingerprint."""
    config = f"{_check_name(name)}_{fingerprint_hash(fingerprint)}"
    return Path(out_dir) / BUILDER_NAME / config / PROCESSING_VERSION


def _check_name(name: str) -> str:
    # TFDS config names: letters, digits, '-', '_' and '.'.
    if not name or not all(c.isalnum() or c in "-_." for c in name):
        raise UserError(f"dataset name {name!r} for the prepared data dir: use [A-Za-z0-9_.-]")
    return name


@contextlib.contextmanager
def _quiet_absl() -> Iterator[None]:
    # Building with a custom BuilderConfig logs two expected absl warnings on every run.
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _is_prepared(path: Path) -> bool:
    """Whether `prepared_path(...)` holds finished data (TFDS renames it into place last)."""
    return (path / "dataset_info.json").is_file()


def _make_builder(config: tfds.core.BuilderConfig, out_dir: Path) -> tuple[DistillRecords, bool]:
    """The builder for `config` and whether its data is already prepared."""
    with _quiet_absl():
        builder = DistillRecords(
            config=config, data_dir=os.fspath(out_dir), file_format="array_record"
        )
        return builder, builder.is_prepared()


def prepare(
    records_fn: Callable[[], Records],
    fingerprint: Mapping[str, Any],
    out_dir: str | os.PathLike,
    *,
    name: str = "records",
) -> dict[str, RecordSource]:
    """Prepare records once into `out_dir` and return {split: random-access records}.

    Args:
      records_fn: called only when no prepared data matches `fingerprint`; returns
        {split: [record dict, ...]} with JSON-serialisable records.
      fingerprint: everything the records depend on (data config fields, seed when it affects
        subsampling, `file_fingerprint(raw files)`, a sources version...). JSON-serialisable.
      out_dir: the prepared-data root (`config.data.prepared_dir`).
      name: human-readable config name, e.g. 'cqa_palm_llm' ([A-Za-z0-9_.-]).

    Returns:
      {split: RecordSource}; `RecordSource[i]` is the i-th record of the split as produced by
      `records_fn` (order kept).
    """
    config = tfds.core.BuilderConfig(
        name=f"{_check_name(name)}_{fingerprint_hash(fingerprint)}",
        description=json.dumps(fingerprint, sort_keys=True, default=str)[:2000],
    )
    out_dir = Path(out_dir)

    def build() -> None:  # on process 0 only
        out_dir.mkdir(parents=True, exist_ok=True)
        builder, prepared = _make_builder(config, out_dir)
        if prepared:
            return
        builder.records_fn = records_fn
        try:
            builder.download_and_prepare()
        except OSError:
            # Another job sharing the data dir may have renamed its copy first.
            if not _make_builder(config, out_dir)[1]:
                raise
        finally:
            builder.records_fn = None  # don't keep the raw records alive

    # Process 0 looks, prepares if needed, and the others wait for it (multihost.py).
    where = prepared_path(out_dir, name, fingerprint)
    if multihost.process0_says(_is_prepared(where)):
        logging.info("Reusing prepared records in %s", where)
    else:
        multihost.on_process0(build, f"preparing the records in {out_dir}")
    builder, prepared = _make_builder(config, out_dir)
    if not prepared:  # process 0 wrote them where this process cannot see them
        raise UserError(
            f"{where}: the records process 0 prepared are not visible here; "
            "data.prepared_dir (or the workdir) must be on a file system all processes share."
        )
    sources = builder.as_data_source()
    sizes = builder.info.metadata["split_sizes"]
    cache_dir = out_dir / "tokens" / config.name
    return {
        split: RecordSource(sources.get(split) if n else None, split, cache_dir)
        for split, n in sizes.items()
    }
