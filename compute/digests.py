"""One way to name content by its hash: stores, caches and retraining plans.

Every identity hash in the project goes through :func:`digest` (SHA-256, cut
to a short hex string), so two ways of hashing the same thing cannot drift
apart. The per-model checksums in the results store are not identities and
use a faster hash (``store.row_checksum``).
"""

import hashlib
import os
import stat

import numpy as np


def digest(*parts, length=16):
    """Hex SHA-256 of ``parts`` in order, cut to ``length`` characters (None: all 64).

    A part is ``bytes``, a ``str`` (hashed as UTF-8) or a numpy array (its
    C-order bytes; the caller adds the shape when it matters). Anything else
    is refused, so a dict is never hashed in an order nobody chose: pass
    ``json.dumps(d, sort_keys=True)``.
    """
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, str):
            part = part.encode()
        elif isinstance(part, np.ndarray):
            part = np.ascontiguousarray(part).tobytes()
        elif not isinstance(part, (bytes, bytearray, memoryview)):
            raise TypeError(f"digest takes bytes, str or numpy arrays; got {type(part).__name__}")
        h.update(part)
    return h.hexdigest() if length is None else h.hexdigest()[:length]


# An input file larger than this is refused, not read (a image this size is
# almost surely a mistake: a video, a disk image, a device)
MAX_FILE_BYTES = 1 << 30


class NotAnImageFileError(ValueError):
    """A path that names no regular file of a readable size (a FIFO, a device,
    a folder, a file above :data:`MAX_FILE_BYTES`)."""


def check_regular_file(path, max_bytes=MAX_FILE_BYTES):
    """``os.stat(path)`` of a regular file of at most ``max_bytes``, or
    :class:`NotAnImageFileError` naming it. Looks without opening, so a FIFO
    or a device never blocks or streams forever."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise NotAnImageFileError(
            f"{path} is not a regular file (a FIFO, a device or a folder); only files are read"
        )
    if st.st_size > max_bytes:
        raise NotAnImageFileError(
            f"{path} holds {st.st_size:,} bytes, more than the {max_bytes:,} an input file "
            f"may have; it was not read"
        )
    return st


def file_digest(path, length=None):
    """:func:`digest` of a file's bytes, read in chunks (never whole into memory);
    only regular files (:func:`check_regular_file`)."""
    check_regular_file(path)
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()[:length]


def pixel_digest(path, length=None):
    """:func:`digest` of an image's decoded pixels (mode, size and values): the
    same for a re-encoded copy (PNG re-saved, another lossless format) whose
    bytes differ."""
    from PIL import Image

    check_regular_file(path)
    with Image.open(path) as img:
        img.load()
        h = hashlib.sha256(f"{img.mode}:{img.size[0]}x{img.size[1]}:".encode())
        h.update(img.tobytes())
    return h.hexdigest()[:length]
