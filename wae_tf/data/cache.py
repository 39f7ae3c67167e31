"""The --cache_dir copy of a decoded split: uint8 rows in one file, its manifest, reads by row.

A copy is <cache_dir>/<kind>-<hash of its key>.u8 (the rows [N, H, W, C] in order) with
<kind>-<hash>.json beside it, written last: a copy without its manifest is incomplete and is
written again. The key holds the source and its preprocessing, so a copy is found again on the
next run and never reused for other data; a folder's manifest also holds a digest of its files'
sizes and times (file_identity), so a copy of files since replaced or fixed is written again.
"""

import hashlib
import json
import os
from typing import List, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

from wae_tf import fileio
from wae_tf.data import folders
from wae_tf.errors import ConfigError, error_summary


def cache_base(cache_dir: str, kind: str, key) -> str:
    """<cache_dir>/<kind>-<hash of key>: one decoded copy per source and preprocessing."""
    digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]
    return os.path.join(cache_dir, f"{kind}-{digest}")


def write_rows(batches, base: str, manifest) -> None:
    """Write uint8 image batches into <base>.u8 (rows in order), then manifest(...) as
    <base>.json, last: a copy without its .json is incomplete and is rebuilt. `batches` yields
    (uint8 [b, H, W, C], extra); manifest gets the list of every extra."""
    tmp, extras = f"{base}.u8.tmp{os.getpid()}", []
    try:
        with open(tmp, "wb") as out:
            for images, extra in batches:
                out.write(np.ascontiguousarray(images, np.uint8).tobytes())
                extras.append(extra)
        os.replace(tmp, base + ".u8")
    except OSError as error:  # a full disk
        raise ConfigError(f"Could not write {tmp} ({error_summary(error)}): free space in "
                          "--cache_dir or name another one.") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    fileio.write_json(base + ".json", manifest(extras))


def file_identity(paths) -> str:
    """A digest of every file's (size, mtime_ns, ctime_ns), as make, rsync and git's index tell
    a changed file without reading it: one stat per file. A file replaced under its name, edited,
    or made readable (chmod moves ctime) changes it; a missing file counts as such."""
    digest = hashlib.sha256()
    for path in paths:
        try:
            if "://" in path:  # gs:// and the other file systems of tf.io.gfile
                status = tf.io.gfile.stat(path)
                times = (status.length, status.mtime_nsec, 0)
            else:
                status = os.stat(path)
                times = (status.st_size, status.st_mtime_ns, status.st_ctime_ns)
        except (OSError, tf.errors.OpError):
            times = ("missing",)
        digest.update(repr(times).encode())
    return digest.hexdigest()


def read_manifest(base: str) -> dict:
    """The manifest of the copy at `base` (<base>.json)."""
    with open(base + ".json") as f:
        return json.load(f)


def decoded_files(files: folders.FileSplit, cache_dir: str) -> Tuple[str, List[int]]:
    """(the .u8 file of `files` decoded, the positions in files.paths of the rows it holds, in
    order): written on first use (one decoding pass, never the whole split in memory), found
    again by its key, and written again when a file has changed since (file_identity), so
    replaced pixels and a fixed bad file are read anew. Files that cannot be decoded are left
    out."""
    base = cache_base(cache_dir, files.name.split()[0],  # "folder" or "celeb_a"
                      [files.paths, files.image_shape, files.crop])
    identity = file_identity(files.paths)  # before decoding: a file changed meanwhile is stale
    manifest = read_manifest(base) if os.path.exists(base + ".json") else None
    if manifest is not None and manifest.get("files") != identity:
        logging.info("Files of %s changed (size or time) since %s.u8 was written: decoding them "
                     "again.", files.name, base)
        manifest = None
    if manifest is None:
        logging.info("Decoding %d images of %s into %s.u8 (once).", len(files.paths),
                     files.name, base)
        fileio.check_writable_dir(cache_dir, "--cache_dir")
        fileio.remove_quietly(base + ".json")  # the stale copy: incomplete until rewritten
        position = {path: i for i, path in enumerate(files.paths)}
        batches = ((images.numpy(), [position[p.decode()] for p in paths.numpy()])
                   for paths, images in folders.image_dataset(
                       list(files.paths), files.size, files.channels, files.crop
                   ).batch(256).prefetch(2))
        write_rows(batches, base, lambda kept: {"kept": sum(kept, []), "files": identity,
                                                "image_shape": files.image_shape})
        manifest = read_manifest(base)
    kept = manifest["kept"]
    logging.info("Reading %d decoded images of %s from %s.u8.", len(kept), files.name, base)
    return base + ".u8", kept


def decoded_batches(batches, base: str, name: str, shape) -> Tuple[str, np.ndarray]:
    """(<base>.u8 holding `batches` (uint8 [b, *shape], int64 labels [b]) in their order, int64
    labels [N]): written on first use, then found again at `base` (see cache_base)."""
    if not os.path.exists(base + ".json"):
        logging.info("Writing the decoded images of %s into %s.u8 (once).", name, base)
        fileio.check_writable_dir(os.path.dirname(base), "--cache_dir")
        write_rows(batches, base, lambda labels: {
            "labels": np.concatenate(labels).tolist() if labels else [], "image_shape": shape})
    labels = np.array(read_manifest(base)["labels"], np.int64)
    logging.info("Reading %d decoded images of %s from %s.u8.", labels.size, name, base)
    return base + ".u8", labels


def row_reader(path: str, shape):
    """indices [b] -> uint8 [b, *shape]: rows of a cache file read with pread (page cache, not
    this process's memory)."""
    row = int(np.prod(shape))

    def read(indices):
        out = np.empty((len(indices), row), np.uint8)
        with open(path, "rb") as f:  # one open per batch: no descriptor outlives the stream
            for k, i in enumerate(indices):
                out[k] = np.frombuffer(os.pread(f.fileno(), row, int(i) * row), np.uint8)
        return out.reshape((len(indices), *shape))
    return read
