"""The shard directory: webdataset tar shards, written atomically, and read back by sample index.

    <out>/vtrain_shards.json             the manifest, written last: data set, source, splits with counts
    <out>/<split dir>/shard-000000.tar   webdataset tars: the members of sample i are <key>.<ext>, key = i
    <out>/<split dir>/shardindex.json    wids' shard index (shard file, sample count, bytes), for wids / timm
    <out>/<split dir>/samples.json       vtrain's index: the source file name of every sample, in sample
                                         order, and the labels of classification sets

Sample i of a split is the i-th sample of the folder reader over the same source (same order, same file,
same label), which is what keeps vtrain's samplers, exact resume and DDP equivalence unchanged: a shard
split is a map-style data set of the same length.
"""

from __future__ import annotations

import bisect
import contextlib
import io
import itertools
import json
import mmap
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import wids.wids

from vtrain.io import atomic_write, atomic_write_text

MANIFEST = "vtrain_shards.json"
FORMAT = "vtrain-shards"
VERSION = 1
SHARD_INDEX = "shardindex.json"
SAMPLE_INDEX = "samples.json"
# the image member of a sample: its source file's extension (lowercased), never re-encoded
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# COCO panoptic: the segment-id PNG of the sample's image, as the source file held it
SEGMENTATION_MEMBER = ".seg.png"
# Cityscapes: the label-id PNG of the sample's image (gtFine ``*_gtFine_labelIds.png``), as the file held it
LABEL_MEMBER = ".labelids.png"

HOW_TO_CONVERT = "convert a data set with: python -m vtrain.data.shards DATASET --root SRC --out DST"


class ShardFormatError(ValueError):
    """A shard directory that is missing, incomplete, or holds another data set or split; names the path."""


def sample_key(index: int) -> str:
    """The webdataset key of sample ``index``: digits only (webdataset splits a member name at its first
    dot into key and extension)."""
    return f"{index:08d}"


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o444, 0  # mtime 0: the same bytes on every run
    tar.addfile(info, io.BytesIO(data))


@dataclass
class SplitWriter:
    """Writes one split's samples into tar shards of about ``shard_bytes`` each, every shard atomically
    (a temporary next to it, renamed when complete), then its two index files.

    ``add(members, file, **labels)`` appends sample ``len(self)``: ``members`` maps extensions
    (".jpg", ".json", ...) to bytes, ``file`` is the source file name the sample came from.
    """

    directory: Path
    shard_bytes: int
    files: list[str] = field(default_factory=list)
    labels: dict[str, list[int]] = field(default_factory=dict)
    shards: list[dict[str, Any]] = field(default_factory=list)
    _tar: tarfile.TarFile | None = None
    _stack: contextlib.ExitStack | None = None
    _count: int = 0
    _bytes: int = 0

    def __len__(self) -> int:
        return len(self.files)

    def _open(self) -> None:
        name = f"shard-{len(self.shards):06d}.tar"
        self._stack = contextlib.ExitStack()
        f = self._stack.enter_context(atomic_write(self.directory / name))
        tar = tarfile.TarFile(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT)
        self._tar = self._stack.enter_context(tar)
        self.shards.append({"url": name, "nsamples": 0, "filesize": 0})
        self._count = self._bytes = 0

    def _close(self) -> None:
        if self._stack is not None:
            self._stack.close()  # the tar's end blocks, then fsync and rename
            self.shards[-1]["nsamples"] = self._count
            self.shards[-1]["filesize"] = (self.directory / self.shards[-1]["url"]).stat().st_size
            self._tar = self._stack = None

    def add(self, members: dict[str, bytes], file: str, **labels: int) -> None:
        if self._tar is None or (self._count and self._bytes >= self.shard_bytes):
            self._close()
            self._open()
        key = sample_key(len(self.files))
        for extension, data in members.items():
            _member(self._tar, key + extension, data)
            self._bytes += len(data)
        self._count += 1
        self.files.append(file)
        for name, value in labels.items():
            self.labels.setdefault(name, []).append(int(value))

    def abort(self) -> None:
        """Drop the shard being written (its temporary is removed; the finished shards stay)."""
        if self._stack is not None:
            self._stack.__exit__(RuntimeError, RuntimeError("conversion aborted"), None)
            self._tar = self._stack = None
            self.shards.pop()

    def finish(self, **extra: Any) -> dict[str, Any]:
        """Close the last shard and write ``shardindex.json`` and ``samples.json`` (``extra`` joins the
        latter); returns the split's entry of the manifest."""
        self._close()
        name = self.directory.parent.name + "/" + self.directory.name
        shard_index = {"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": name}
        atomic_write_text(self.directory / SHARD_INDEX, json.dumps({**shard_index, "shardlist": self.shards}))
        atomic_write_text(
            self.directory / SAMPLE_INDEX, json.dumps({"files": self.files, **self.labels, **extra})
        )
        return {
            "dir": self.directory.name,
            "samples": len(self.files),
            "shards": len(self.shards),
            "bytes": sum(shard["filesize"] for shard in self.shards),
        }


def read_manifest(root: str | Path) -> dict[str, Any]:
    """The manifest of the shard directory ``root``; ShardFormatError naming it when there is none."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise ShardFormatError(
            f"{root} is not a shard directory: {path} does not exist (data.format=shards expects the output "
            f"of the converter, whose manifest is written last); {HOW_TO_CONVERT}"
        )
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ShardFormatError(
            f"{path}: expected format {FORMAT!r} version {VERSION}, found {manifest.get('format')!r} "
            f"version {manifest.get('version')!r}"
        )
    return manifest


class ShardSplit:
    """Random access to the samples of one converted split: ``split[i]`` is a dict of the sample's members,
    extension -> bytes (".jpg", ".json", ...).

    Args:
        root: the shard directory (the converter's ``--out``).
        datasets: the data set names this reader accepts (the manifest's ``dataset`` must be one of them).
        split: the split name ("train", "val", ...).

    Attributes:
        directory: the split's folder; ``files`` the source file name of each sample; ``index`` the rest of
        ``samples.json`` (labels, class names); ``manifest`` the directory's manifest.

    Each tar is opened on first use in each process (``wids.IndexedTarSamples``: memory-mapped, its member
    index built from the tar headers; each member's name is checked) and read in place: no copy, no lock
    files, so a read-only file system works. The object pickles to DataLoader workers without its open
    files.
    """

    def __init__(self, root: str | Path, datasets: tuple[str, ...], split: str) -> None:
        self.manifest = read_manifest(root)
        found = self.manifest["dataset"]
        if found not in datasets:
            raise ShardFormatError(
                f"{Path(root) / MANIFEST}: the shards hold {found!r}, expected {' or '.join(datasets)} "
                f"(data.dataset and data.root must name the same data set)"
            )
        splits = self.manifest["splits"]
        if split not in splits:
            raise ShardFormatError(
                f"{Path(root) / MANIFEST}: no {split!r} split in these {found} shards, found "
                f"{sorted(splits)}; convert a source that has that split"
            )
        self.directory = Path(root) / splits[split]["dir"]
        index = json.loads((self.directory / SAMPLE_INDEX).read_text())
        self.files: list[str] = index.pop("files")
        self.index = index
        self.split = split
        if len(self.files) != splits[split]["samples"]:
            raise ShardFormatError(
                f"{self.directory / SAMPLE_INDEX}: {len(self.files)} samples, but the manifest counts "
                f"{splits[split]['samples']}; the directory is incomplete, convert it again"
            )
        shardlist = json.loads((self.directory / SHARD_INDEX).read_text())["shardlist"]
        self._shard_files = [self.directory / shard["url"] for shard in shardlist]
        self._ends = list(itertools.accumulate(shard["nsamples"] for shard in shardlist))
        if not self._ends or self._ends[-1] != len(self.files):
            raise ShardFormatError(
                f"{self.directory / SHARD_INDEX}: its shards hold {self._ends[-1] if self._ends else 0} "
                f"samples, {SAMPLE_INDEX} lists {len(self.files)}; convert the data set again"
            )
        self._positions: dict[str, int] | None = None
        self._open: dict[int, tuple[mmap.mmap, list[dict[str, tuple[int, int]]]]] = {}

    def __len__(self) -> int:
        return len(self.files)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_open": {}}

    def position(self, file: str) -> int:
        """The sample index of the source file ``file``; KeyError naming the split when it is absent."""
        if self._positions is None:
            self._positions = {name: i for i, name in enumerate(self.files)}
        if file not in self._positions:
            raise KeyError(f"{self.directory}: no sample for the file {file!r} in the {self.split} shards")
        return self._positions[file]

    def _shard(self, index: int) -> tuple[mmap.mmap, list[dict[str, tuple[int, int]]], int]:
        """(the memory-mapped tar, (start, size) of each member of each of its samples by extension, the
        position of sample ``index`` in it), the tar opened and checked on first use in this process."""
        if not 0 <= index < len(self.files):
            raise IndexError(f"{self.directory}: sample {index} of {len(self.files)}")
        shard = bisect.bisect_right(self._ends, index)
        first = self._ends[shard - 1] if shard else 0
        if shard not in self._open:
            path = self._shard_files[shard]
            tar = wids.wids.IndexedTarSamples(path=str(path))
            if len(tar) != self._ends[shard] - first:
                raise ShardFormatError(
                    f"{path}: {len(tar)} samples, {SHARD_INDEX} counts {self._ends[shard] - first}"
                )
            samples = []
            for position, files in enumerate(tar.samples):
                members = {}
                for file in files:
                    name, offset, size = tar.reader.by_index[file]
                    key, extension = name.split(".", 1)
                    if key != sample_key(first + position):
                        raise ShardFormatError(
                            f"{path}: expected the members of sample {sample_key(first + position)}, "
                            f"found {name}"
                        )
                    members["." + extension] = (offset + 512, size)  # the data follows its 512-byte header
                samples.append(members)
            self._open[shard] = (tar.reader.mmapped_file, samples)
        data, samples = self._open[shard]
        return data, samples, index - first

    def __getitem__(self, index: int) -> dict[str, bytes]:
        data, samples, position = self._shard(index)
        return {name: data[start : start + size] for name, (start, size) in samples[position].items()}

    def image_bytes(self, index: int) -> bytes:
        """The encoded image of sample ``index``, as the source file held it."""
        data, samples, position = self._shard(index)
        images = [name for name in samples[position] if name in IMAGE_EXTENSIONS]
        if len(images) != 1:
            raise ShardFormatError(
                f"{self.directory}: sample {sample_key(index)} ({self.files[index]}) has members "
                f"{sorted(samples[position])}, expected one image ({', '.join(IMAGE_EXTENSIONS)})"
            )
        start, size = samples[position][images[0]]
        return data[start : start + size]

    def member(self, index: int, extension: str) -> bytes:
        """The member ``extension`` (".json", ".seg.png", ...) of sample ``index``."""
        data, samples, position = self._shard(index)
        if extension not in samples[position]:
            raise ShardFormatError(
                f"{self.directory}: sample {sample_key(index)} ({self.files[index]}) has no {extension} "
                f"member, found {sorted(samples[position])}"
            )
        start, size = samples[position][extension]
        return data[start : start + size]


def iter_members(path: str | Path) -> Iterator[tuple[str, bytes]]:
    """(member name, bytes) of a tar shard in order, for tests and inspection."""
    with tarfile.open(path) as tar:
        for member in tar:
            yield member.name, tar.extractfile(member).read()
