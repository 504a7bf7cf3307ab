"""One write path for every job: a lock and a journal per (dataset, run key).

Every job that changes a dataset (fields, sample tags, saved views, runs)
does it through a :class:`RunWrite`::

    with RunWrite(key, "leakage", [root], overwrite) as w:   # lock; debris of a killed
        ...compute...                                           # write of this key undone
        w.add_field(root, "leak_score", fo.FloatField)          # staged under another name
        w.set_values(root, "leak_score", values)
        w.tag(root, ids, "leak")                                # applied at commit
        w.save_view(root, "leak_likely", make_view)             # applied at commit
        w.register(root, config, results)                       # the run, last
        w.commit()

The journal (collection ``transferscope_writes`` of FiftyOne's database, one
document per dataset and key) names everything before it is touched: the
staged fields, the samples a tag is added to, the saved views, the run. A
process killed anywhere leaves a journal whose owner is gone; the next
:class:`RunWrite` of the same key takes it over and undoes what it names, so
the same call again ends as an uninterrupted one would. New values are
written to staged fields first: with ``overwrite``, the previous run, its
fields, tags and views stay intact until the new values are all written;
only then is the old run deleted and the staged fields renamed.

The journal document is also the lock: a second writer of the same dataset
and key is refused with the holder named (host, process, since); a holder
whose process is gone (same host), or whose heartbeat is older than
:data:`STALE_AFTER_S` (another host), is taken over.
"""

import datetime
import logging
import os
import signal
import socket
import threading
import time
import uuid
from contextlib import contextmanager

import fiftyone as fo
import fiftyone.core.labels as fol

from .views import TransferScopeError, check_run_key_free, refresh_if_changed_elsewhere

logger = logging.getLogger(__name__)

JOURNAL = "transferscope_writes"
# a holder on another host that has not beaten for this long is taken over
STALE_AFTER_S = 900
_HEARTBEAT_EVERY_S = 30


class RunLockedError(TransferScopeError):
    """Another process is writing the same run key on the same dataset."""


# How long a writer waits for another process's schema change on the same
# dataset (they are short: adding, renaming or filling a field, a commit).
SCHEMA_WAIT_S = 600.0
_SCHEMA_POLL_S = 0.05
# the schema locks this process holds, with their depth (they nest)
_schema_held = {}


@contextmanager
def schema_lock(datasets, wait_s=None):
    """One writer at a time changes each of ``datasets``' schema, runs and views.

    FiftyOne keeps a dataset's field list and run references in one document
    that each change reads, modifies and saves whole: two processes changing
    it at once lose one another's changes (a staged field, a rename, a run).
    Every transferscope write to a dataset's schema, runs or views happens
    under this lock, after the dataset is read again from the database. The
    locks are documents of the journal collection, taken in the datasets' id
    order (no deadlock), reentrant within a process, and taken over from a
    holder whose process is gone. A writer that waits longer than
    ``wait_s`` (default :data:`SCHEMA_WAIT_S`) is refused with the holder
    named; nothing of its own has changed then.
    """
    from pymongo.errors import DuplicateKeyError

    roots = {d._root_dataset.name: d._root_dataset for d in datasets}
    ordered = sorted(roots.values(), key=lambda d: str(d._doc.id))
    wait_s = SCHEMA_WAIT_S if wait_s is None else wait_s
    taken = []
    try:
        for ds in ordered:
            lock_id = f"{ds._doc.id}:schema"
            if _schema_held.get(lock_id):
                _schema_held[lock_id] += 1
                taken.append(lock_id)
                continue
            deadline = time.monotonic() + wait_s
            waited = False
            while True:
                try:
                    _journal().insert_one(
                        {"_id": lock_id, "dataset": ds.name, "method": "schema", "owner": _me()}
                    )
                    break
                except DuplicateKeyError:
                    held = _journal().find_one({"_id": lock_id})
                    if held is None:
                        continue
                    if not owner_alive(held["owner"]):
                        _journal().delete_one({"_id": lock_id, "owner": held["owner"]})
                        continue
                    if time.monotonic() > deadline:
                        raise RunLockedError(
                            f"dataset {ds.name!r} has had its fields changed by "
                            f"{describe_owner(held['owner'])} for more than {wait_s:g} s; "
                            f"try again when it is done"
                        ) from None
                    if not waited:
                        logger.info(
                            "waiting for %s to finish changing the fields of %r",
                            describe_owner(held["owner"]),
                            ds.name,
                        )
                        waited = True
                    time.sleep(_SCHEMA_POLL_S)
            _schema_held[lock_id] = 1
            taken.append(lock_id)
            refresh_if_changed_elsewhere(ds)  # what other processes committed
        yield
    finally:
        for lock_id in reversed(taken):
            _schema_held[lock_id] -= 1
            if not _schema_held[lock_id]:
                del _schema_held[lock_id]
                _journal().delete_one(
                    {"_id": lock_id, "owner.pid": os.getpid(), "owner.host": socket.gethostname()}
                )


def _journal():
    import fiftyone.core.odm as foo

    return foo.get_db_conn()[JOURNAL]


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


def _me():
    import psutil

    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": psutil.Process().create_time(),
        "since": _now().isoformat(),
        "heartbeat": _now().isoformat(),
    }


def owner_alive(owner):
    """Whether a journal's owner may still be writing."""
    import psutil

    if owner.get("host") == socket.gethostname():
        try:
            proc = psutil.Process(int(owner["pid"]))
            return (
                abs(proc.create_time() - float(owner["started"])) < 1.0
                and proc.status() != psutil.STATUS_ZOMBIE
            )
        except (psutil.NoSuchProcess, psutil.AccessDenied, KeyError, ValueError):
            return False
    beat = datetime.datetime.fromisoformat(owner.get("heartbeat") or owner["since"])
    return (_now() - beat).total_seconds() < STALE_AFTER_S


def describe_owner(owner):
    return f"process {owner.get('pid')} on {owner.get('host')} since {owner.get('since')}"


def _checkpoint(name):
    """A named point of the write; the kill-anywhere tests stop the process here
    (``TRANSFERSCOPE_KILL_AT``), with SIGKILL or the signal
    ``TRANSFERSCOPE_KILL_SIGNAL`` names (``INT``, ``TERM``)."""
    if os.environ.get("TRANSFERSCOPE_KILL_AT") == name:
        sig = getattr(signal, "SIG" + os.environ.get("TRANSFERSCOPE_KILL_SIGNAL", "KILL"))
        os.kill(os.getpid(), sig)


@contextmanager
def signals_deferred():
    """SIGINT and SIGTERM received inside the block take effect when it ends.

    The commit switches a run on every dataset in a few statements; a
    ctrl-C between them would leave the old run on one dataset and the new
    one on the other until the same call ran again. Outside the main thread
    (where Python cannot set handlers) the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if received:
            logger.warning("signal %d arrived while committing; acting on it now", received[0])
            signal.raise_signal(received[0])


class RunWrite:
    """The writes of one job under ``key`` on ``datasets`` (root datasets).

    Use as a context manager; call :meth:`commit` at the end of the block.
    Leaving the block without committing (an exception) undoes everything.
    """

    def __init__(self, key, method, datasets, overwrite=False):
        self.key = key
        self.method = method
        roots = {d._root_dataset.name: d._root_dataset for d in datasets}
        self.datasets = sorted(roots.values(), key=lambda d: str(d._doc.id))
        self.overwrite = overwrite
        self.token = uuid.uuid4().hex[:8]
        self._held = []
        self._staged = {}  # (dataset name, final) -> staged
        self._types = {}
        self._tags = []
        self._views = []
        self._runs = []
        self._records = []
        self._old_runs = {}  # dataset name -> extra undo of what the old state left
        self._committed = False
        self._last_beat = _now()

    # --- lock and recovery ----------------------------------------------------
    def _id(self, ds):
        return f"{ds._doc.id}:{self.key}"

    def __enter__(self):
        from pymongo.errors import DuplicateKeyError

        coll = _journal()
        try:
            for ds in self.datasets:
                doc = {
                    "_id": self._id(ds),
                    "dataset": ds.name,
                    "key": self.key,
                    "method": self.method,
                    "owner": _me(),
                    "phase": "locked",
                    "staged": {},
                    "tags": [],
                    "views": [],
                    "old": None,
                    "old_deleted": False,
                    "registered": False,
                }
                try:
                    coll.insert_one(doc)
                except DuplicateKeyError:
                    self._take_over(coll, ds, doc)
                self._held.append(ds)
        except BaseException:
            self._release()
            raise
        return self

    def _take_over(self, coll, ds, fresh):
        old = coll.find_one({"_id": fresh["_id"]})
        if old is None:  # released meanwhile
            coll.insert_one(fresh)
            return
        if owner_alive(old["owner"]):
            raise RunLockedError(
                f"run key {self.key!r} on dataset {ds.name!r} is being written by "
                f"{describe_owner(old['owner'])} ({old.get('method')}); wait for it or "
                f"choose another key"
            )
        taken = coll.find_one_and_update(
            {"_id": fresh["_id"], "owner": old["owner"]}, {"$set": {"owner": fresh["owner"]}}
        )
        if taken is None:
            raise RunLockedError(
                f"run key {self.key!r} on dataset {ds.name!r} was just taken "
                f"by another process; try again"
            )
        logger.warning(
            "undoing the interrupted %s write of key %r on %r (%s)",
            old.get("method"),
            self.key,
            ds.name,
            describe_owner(old["owner"]),
        )
        with schema_lock([ds]):
            recover(ds, old)
        coll.replace_one({"_id": fresh["_id"]}, fresh)

    def __exit__(self, exc_type, exc, tb):
        try:
            if not self._committed:
                self.rollback()
        finally:
            self._release()
        return False

    def _release(self):
        coll = _journal()
        for ds in self._held:
            coll.delete_one(
                {"_id": self._id(ds), "owner.pid": os.getpid(), "owner.host": socket.gethostname()}
            )
        self._held = []

    def heartbeat(self):
        """Tells other hosts this write is alive (cheap; call it as often as you like)."""
        if (_now() - self._last_beat).total_seconds() < _HEARTBEAT_EVERY_S:
            return
        self._last_beat = _now()
        for ds in self._held:
            _journal().update_one(
                {"_id": self._id(ds)}, {"$set": {"owner.heartbeat": self._last_beat.isoformat()}}
            )

    def _journal_update(self, ds, update):
        _journal().update_one({"_id": self._id(ds)}, update)

    def check_key_free(self, ds, fields):
        """Refuses the key if ``ds`` has a run of it (unless ``overwrite``) or fields
        another run owns, read under the schema lock: another writer's commit
        is never seen half done."""
        with schema_lock([ds]):
            check_run_key_free(ds, self.key, self.overwrite, fields)

    # --- staging --------------------------------------------------------------
    def staged_name(self, ds, field):
        return self._staged[(ds.name, field)]

    def add_field(self, ds, field, ftype):
        """Declares field ``field`` (a field class, or a label class) in its staged form."""
        staged = f"ts{self.token}_{field}"
        if ds.has_sample_field(staged):
            raise TransferScopeError(f"dataset {ds.name!r} already has a field {staged!r}")
        self._journal_update(ds, {"$set": {f"staged.{field}": staged, "phase": "staging"}})
        self._staged[(ds.name, field)] = staged
        self._types[(ds.name, field)] = ftype
        with schema_lock([ds]):
            if isinstance(ftype, type) and issubclass(ftype, fol.Label):
                ds.add_sample_field(staged, fo.EmbeddedDocumentField, embedded_doc_type=ftype)
            else:
                ds.add_sample_field(staged, ftype)
        return staged

    def declare_subfield(self, ds, field, path, ftype):
        """Declares ``<field>.<path>`` (a dynamic attribute the App should filter on)."""
        with schema_lock([ds]):
            ds.add_sample_field(f"{self.staged_name(ds, field)}.{path}", ftype)

    def set_values(self, ds, field, values, view=None):
        """``values``: ``{sample id: value}`` for the staged ``field``."""
        with schema_lock([ds]):  # new attributes of labels extend the schema
            (view if view is not None else ds).set_values(
                self.staged_name(ds, field), values, key_field="id"
            )
        _checkpoint("field_staged")

    def tag(self, ds, ids, tag):
        """Adds ``tag`` at commit to those of ``ids`` that lack it then (only they lose
        it on undo). Returns ``{"tag", "ids"}``, whose ``ids`` the commit fills in."""
        record = {"tag": tag, "ids": None}
        self._tags.append((ds, [str(i) for i in ids], record))
        return record

    def save_view(self, ds, name, make_view):
        """Saves ``make_view()`` (built at commit, on the final field names) as ``name``."""
        self._views.append((ds, name, make_view))

    def register(self, ds, config, results=None):
        """Registers the run ``key`` on ``ds`` at commit (``results`` saved with it)."""
        self._runs.append((ds, config, results))

    def set_record(self, ds, name, value):
        """Stores ``value`` (or what ``value()`` returns then) as attribute ``name`` of
        run ``key``'s config at commit, after the tags (one atomic update; see
        :func:`transferscope.runs.run_record`)."""
        self._records.append((ds, name, value))

    def replace_old(self, ds, tags=(), views=()):
        """What the write replaces besides the old run (say, a previous tagging):
        removed at commit, after every new value is staged."""
        self._old_runs[ds.name] = {"tags": [dict(t) for t in tags], "views": list(views)}

    # --- commit and rollback --------------------------------------------------
    def _check_views(self):
        for ds, name, _ in self._views:
            if not ds.has_saved_view(name):
                continue
            owned = name in (self._old_runs.get(ds.name) or {}).get("views", [])
            if self.overwrite and self.key in ds.list_runs():
                owned |= name in getattr(ds.get_run_info(self.key).config, "saved_views", [])
            if not owned:
                raise TransferScopeError(
                    f"dataset {ds.name!r} already has a saved view {name!r} that run "
                    f"{self.key!r} did not create; rename or delete it, or choose another key"
                )

    def commit(self):
        """Replaces the old run (with ``overwrite``), renames the staged fields, tags,
        saves views and registers the runs; releases the lock. The datasets'
        schema lock is held throughout, and the datasets are read again first:
        a run that another process registered under this key meanwhile is
        refused, not replaced, unless ``overwrite``."""
        with schema_lock(self.datasets), signals_deferred():
            self._check_key_still_free()
            self._commit()

    def _check_key_still_free(self):
        if self.overwrite or not self._runs:
            return
        for ds, _, _ in self._runs:
            if self.key in ds.list_runs():
                raise TransferScopeError(
                    f"dataset {ds.name!r} got a run with key {self.key!r} from another "
                    f"process while this one computed; nothing was changed: pass "
                    f"overwrite=True to replace it, or choose another key"
                )

    def _commit(self):
        self._check_views()
        olds = {}
        for ds in self.datasets:
            old = dict(self._old_runs.get(ds.name) or {"tags": [], "views": []})
            old["run"] = self.overwrite and self.key in ds.list_runs()
            olds[ds.name] = old
            self._journal_update(
                ds,
                {
                    "$set": {
                        "old": old,
                        "views": [n for d, n, _ in self._views if d.name == ds.name],
                        "records": [n for d, n, _ in self._records if d.name == ds.name],
                    }
                },
            )
        _checkpoint("commit_started")  # until here, a kill leaves the old state intact
        for ds in self.datasets:
            self._journal_update(ds, {"$set": {"phase": "committing"}})
            _remove_old(ds, self.key, olds[ds.name])
            self._journal_update(ds, {"$set": {"old_deleted": True}})
        _checkpoint("old_removed")
        for (name, field), staged in self._staged.items():
            ds = next(d for d in self.datasets if d.name == name)
            if ds.has_sample_field(field):
                ds.delete_sample_field(field)
            ds.rename_sample_field(staged, field)
            _checkpoint("field_renamed")
        for ds, ids, record in self._tags:
            # after the old state is gone: samples it had tagged are new ones now
            already = set(ds.select(ids).match_tags(record["tag"]).values("id")) if ids else set()
            record["ids"] = [i for i in ids if i not in already]
            self._journal_update(ds, {"$push": {"tags": dict(record)}})
            if record["ids"]:
                ds.select(record["ids"]).tag_samples(record["tag"])
        _checkpoint("tagged")
        for ds, name, make_view in self._views:
            ds.save_view(name, make_view(), overwrite=True)
        _checkpoint("views_saved")
        for ds, config, results in self._runs:
            self._journal_update(ds, {"$set": {"registered": True}})
            ds.register_run(self.key, config, results=results, overwrite=True, cleanup=False)
            _checkpoint("run_registered")
        for ds, name, value in self._records:
            set_run_record(ds, self.key, name, value() if callable(value) else value)
            _checkpoint("record_saved")
        self._committed = True
        self._release()
        _checkpoint("committed")

    def rollback(self):
        """Undoes everything this write did (used on an exception)."""
        for ds in self._held:
            doc = _journal().find_one({"_id": self._id(ds)})
            if doc is not None:
                try:
                    with schema_lock([ds]):
                        recover(ds, doc)
                except Exception:  # keep the original error
                    logger.exception("could not undo the writes of key %r on %r", self.key, ds.name)


def _remove_old(ds, key, old):
    """Deletes the run being replaced (its cleanup removes its fields, tags, views)
    and whatever else ``old`` names; idempotent, so recovery can finish it."""
    if old is None:
        return
    if old.get("run") and key in ds.list_runs():
        ds.delete_run(key)
    _untag_and_unsave(ds, old.get("tags", []), old.get("views", []))


def _untag_and_unsave(ds, tags, views):
    """Removes each ``{"tag", "ids"}`` tag from its samples, and the saved ``views``."""
    for record in tags:
        if record.get("ids"):
            ds.select(record["ids"]).untag_samples(record["tag"])
    for name in views:
        if ds.has_saved_view(name):
            ds.delete_saved_view(name)


def recover(ds, doc):
    """Undoes what an interrupted (or failed) write's journal ``doc`` names on ``ds``.

    Before the commit removes the old state, only staged fields exist: they
    go, and the old run stays as it was. Once the commit has begun removing
    the old state, it is removed for good (the write was replacing it, and
    its new values were complete), and the new fields, tags, views and run
    go too; the same call again then writes everything anew.
    """
    ds.reload()
    staged = doc.get("staged") or {}
    for staged_name in staged.values():
        if ds.has_sample_field(staged_name):
            ds.delete_sample_field(staged_name)
    if doc.get("phase") != "committing":
        return
    _remove_old(ds, doc["key"], doc.get("old"))
    present = [f for f in staged if ds.has_sample_field(f)]
    if present:
        ds.delete_sample_fields(present)
    _untag_and_unsave(ds, doc.get("tags", []), doc.get("views", []))
    if doc.get("registered"):
        if doc["key"] in ds.list_runs():
            import fiftyone.core.runs as fors

            # ours, half-registered: its cleanup would read results it may lack
            fors.Run.delete_run(ds, doc["key"], cleanup=False)
        delete_orphan_run_docs(ds, doc["key"])
    elif doc["key"] in ds.list_runs():  # the old record was removed with the old state
        for name in doc.get("records", []):
            set_run_record(ds, doc["key"], name, None)


def set_run_record(ds, key, name, value):
    """Sets attribute ``name`` of run ``key``'s config to ``value`` (atomic)."""
    config = ds.get_run_info(key).config
    setattr(config, name, value)
    config.records_in_config = True
    ds.update_run_config(key, config)


def delete_orphan_run_docs(ds, key):
    """Run documents of ``key`` on ``ds`` that the dataset does not reference (a
    process killed inside FiftyOne's ``register_run``), with their results."""
    import fiftyone.core.odm as foo
    import gridfs

    db = foo.get_db_conn()
    referenced = {doc.id for doc in ds._doc.runs.values() if hasattr(doc, "id")}
    fs = gridfs.GridFS(db)
    for doc in db.runs.find({"_dataset_id": ds._doc.id, "key": key}):
        if doc["_id"] in referenced:
            continue
        if doc.get("results") is not None:
            try:
                fs.delete(doc["results"])
            except Exception:  # noqa: BLE001 - already gone
                pass
        db.runs.delete_one({"_id": doc["_id"]})


def write_in_progress(ds, key):
    """Whether a write of ``key`` on ``ds`` holds its lock now (a run's cleanup
    then leaves to that write what the write may reuse, such as its store)."""
    return _journal().find_one({"_id": f"{ds._root_dataset._doc.id}:{key}"}) is not None


def release_all_of_this_process():
    """Drops the journals this process holds (tests: after a simulated crash)."""
    _journal().delete_many({"owner.pid": os.getpid(), "owner.host": socket.gethostname()})
