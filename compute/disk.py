"""Files whose disk blocks are reserved when they are created.

A memory-mapped ``.npy`` file is created sparse: its blocks are allocated
when a row is first written, and on a full filesystem that write kills the
process with SIGBUS, with no message and the run's lock still held. Reserving
the blocks up front (``posix_fallocate``) makes a full disk an ordinary
Python error at creation, which names the folder, the bytes needed and the
bytes free, and lets every ``with`` block above it clean up.
"""

import errno
import os
import shutil
from contextlib import contextmanager

import numpy as np


class DiskFullError(OSError):
    """Not enough disk space for a file transferscope was about to write."""


def open_memmap_reserved(path, dtype, shape):
    """``np.lib.format.open_memmap(path, "w+", dtype, shape)`` with every block of
    the file reserved, or :class:`DiskFullError` (the file removed again)."""
    with named_when_full(path):  # the header itself may not fit
        array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    try:
        reserve(path)
    except DiskFullError:
        del array
        os.remove(path)
        raise
    return array


@contextmanager
def named_when_full(path):
    """Turns a full disk while writing ``path`` into :class:`DiskFullError` naming
    it (the partial file removed); other errors pass unchanged."""
    try:
        yield
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT) or isinstance(e, DiskFullError):
            raise
        if os.path.exists(path):
            os.remove(path)
        folder = os.path.dirname(os.path.abspath(path))
        raise DiskFullError(
            e.errno,
            f"not enough disk space in {folder} to write {os.path.basename(path)} "
            f"({shutil.disk_usage(folder).free:,} bytes free); free some space and run "
            f"the same call again",
        ) from None


def reserve(path):
    """Allocates the blocks of the file at ``path`` (its current size)."""
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            folder = os.path.dirname(os.path.abspath(path))
            free = shutil.disk_usage(folder).free
            raise DiskFullError(
                e.errno,
                f"not enough disk space in {folder}: {os.path.basename(path)} needs "
                f"{size:,} bytes and {free:,} are free; free some space (or choose another "
                f"output_dir) and run the same call again",
            ) from None
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
        # a filesystem without fallocate: the file stays sparse, as numpy made it
    finally:
        os.close(fd)
