"""Prepare a dataset's processed records once into a versioned ArrayRecord data dir (TFDS).

`prepare` runs `records_fn()` (e.g. `sources.load_splits`) at most once per fingerprint and
writes the splits with a TFDS `GeneratorBasedBuilder` (no TensorFlow needed; checked with
tensorflow-datasets 4.9.10), each record one JSON text feature (optional fields round trip).

Layout: `<out_dir>/distill_records/<name>_<hash>/<PROCESSING_VERSION>/`, the token ids in
`<out_dir>/tokens/<name>_<hash>/` (`token_cache.py`). `<hash>` digests the fingerprint (the
data config, `file_fingerprint(raw files)`) and `PROCESSING_VERSION`: changed files, options
or processing give a new directory; old ones stay (another run may use them). TFDS writes into
`incomplete.*` and renames it when complete; process 0 alone prepares, the others wait and read
(a shared file system); racing jobs lose only the rename and read the winner's (same) files.
"""

from __future__ import annotations

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
    """Random-access, read-only view of one prepared split: `src[i]` is record i (a dict);
    `__getitems__` reads a batch of records at once."""

    def __init__(self, data_source: Any, split: str, cache_dir: Path | None = None):
        self._source = data_source  # tfds ArrayRecordDataSource (None for an empty split)
        self.split = split
        self.cache_dir = cache_dir  # where derived data (token ids, token_cache.py) is kept

    def __len__(self) -> int:
        return 0 if self._source is None else len(self._source)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.__getitems__(range(len(self))[index])
        if not -len(self) <= index < len(self):
            raise IndexError(f"record {index} out of range for split {self.split!r} ({len(self)})")
        return json.loads(self._source[index % len(self)]["record"])  # bytes (UTF-8) or str

    def __getitems__(self, indices: Iterable[int]) -> list[dict[str, Any]]:
        indices = list(indices)
        if not indices:
            return []
        return [json.loads(x["record"]) for x in self._source.__getitems__(indices)]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        chunk = 4096  # batched reads are much faster than one record at a time
        for start in range(0, len(self), chunk):
            yield from self.__getitems__(range(start, min(start + chunk, len(self))))

    def __repr__(self) -> str:
        return f"RecordSource(split={self.split!r}, len={len(self)})"


class DistillRecords(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """TFDS builder of processed records, one BuilderConfig per dataset variant; the records
    come from `records_fn`, set on the instance, instead of downloads."""

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
        del dl_manager  # nothing to download: records come from `records_fn` (set by prepare)
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
    """Content fingerprint of raw files: {path: {'size', 'sha256'}} ('missing' if absent);
    directories are walked. Contents, not mtimes: touching or copying a file does not force a
    rebuild, any edit does."""
    out: dict[str, Any] = {}
    for path in map(Path, paths):
        if not path.exists():
            out[str(path)] = "missing"
            continue
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            with open(f, "rb") as fh:
                digest = hashlib.file_digest(fh, "sha256").hexdigest()
            out[str(f)] = {"size": f.stat().st_size, "sha256": digest}
    return out


def prepared_path(out_dir: str | os.PathLike, name: str, fingerprint: Mapping[str, Any]) -> Path:
    """Directory that `prepare` writes for this name and fingerprint."""
    # TFDS config names: letters, digits, '-', '_' and '.'.
    if not name or not all(c.isalnum() or c in "-_." for c in name):
        raise UserError(f"dataset name {name!r} for the prepared data dir: use [A-Za-z0-9_.-]")
    config = f"{name}_{fingerprint_hash(fingerprint)}"
    return Path(out_dir) / BUILDER_NAME / config / PROCESSING_VERSION


def _make_builder(config: tfds.core.BuilderConfig, out_dir: Path) -> tuple[DistillRecords, bool]:
    """The builder for `config` and whether its data is already prepared."""
    # Building with a custom BuilderConfig logs two expected absl warnings on every run.
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        builder = DistillRecords(
            config=config, data_dir=os.fspath(out_dir), file_format="array_record"
        )
        return builder, builder.is_prepared()
    finally:
        logger.setLevel(level)


def prepare(
    records_fn: Callable[[], Records],
    fingerprint: Mapping[str, Any],
    out_dir: str | os.PathLike,
    *,
    name: str = "records",
) -> dict[str, RecordSource]:
    """{split: RecordSource} of the records `records_fn()` ({split: [JSON-serialisable dict]})
    gives, in order, prepared once into `out_dir`: it is called only when no prepared data
    matches `fingerprint` (everything the records depend on). `name`: e.g. 'cqa_palm_llm'."""
    out_dir = Path(out_dir)
    where = prepared_path(out_dir, name, fingerprint)
    config = tfds.core.BuilderConfig(
        name=where.parent.name,
        description=json.dumps(fingerprint, sort_keys=True, default=str)[:2000],
    )

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

    # Process 0 looks, prepares if needed, and the others wait for it (multihost.py). TFDS
    # renames the finished directory into place last, dataset_info.json included.
    if multihost.process0_says((where / "dataset_info.json").is_file()):
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
