"""One way to name content by its hash: stores, caches and retraining plans.

Every identity hash in the project goes through :func:`digest` (SHA-256, cut
to a short hex string), so two ways of hashing the same thing cannot drift
apart. The per-model checksums in the results store are not identities and
use a faster hash (``store.row_checksum``).
"""

import hashlib

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


def file_digest(path, length=None):
    """:func:`digest` of a file's bytes, read in chunks (never whole into memory)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()[:length]


def pixel_digest(path, length=None):
    """:func:`digest` of an image's decoded pixels (mode, size and values): the
    same for a re-encoded copy (PNG re-saved, another lossless format) whose
    bytes differ."""
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        h = hashlib.sha256(f"{img.mode}:{img.size[0]}x{img.size[1]}:".encode())
        h.update(img.tobytes())
    return h.hexdigest()[:length]
