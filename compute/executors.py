"""Where subset models train: in this process, or as tasks on a Ray cluster.

An executor takes :class:`ModelJob` s and calls back, on the driver, with
each finished model's outputs; the driver alone writes the results store, so
a run can start on one executor, be killed, and resume on another without
retraining a finished row or writing one twice.

A model's outputs are a pure function of (config, model index, masks, data)
*and of the number of threads it trains with* (floating-point summation
order changes with it). Jobs carry their thread count, so a Ray task with
``cpus_per_model=1`` reproduces, bit for bit, a local run with ``threads=1``.
"""

import dataclasses
import logging
import socket
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from .checks import check_choice, check_int
from .config import ENGINE_VERSION, InfluenceConfig
from .train import MappedArrayFile, train_subset_model

logger = logging.getLogger(__name__)

EXECUTORS = ("local", "ray")
# how a Ray job's images reach its tasks: see RayExecutor
IMAGE_SHIPPING = ("auto", "object_store", "shared_path")


@dataclasses.dataclass(frozen=True)
class ModelJob:
    """One model to train; ``row`` is its row in the results store."""

    row: int
    config: InfluenceConfig
    model_index: int
    class_mask: np.ndarray
    sample_mask: np.ndarray | None = None


class ModelsFailedError(RuntimeError):
    """Some models failed; every other model finished and was written.

    ``failures`` maps each failed store row to the reason.
    """

    def __init__(self, failures, num_done, num_total):
        self.failures = dict(failures)
        shown = "; ".join(f"row {row}: {why}" for row, why in sorted(self.failures.items())[:5])
        more = f" (and {len(self.failures) - 5} more)" if len(self.failures) > 5 else ""
        super().__init__(
            f"{len(self.failures)} model(s) failed: {shown}{more}. The run is incomplete: "
            f"{num_done} of {num_total} models are stored; run it again to retry only "
            "the missing ones"
        )


def run_job(job, data, threads=None):
    """Trains one job; ``threads`` (if given) is torch's intra-op thread count."""
    with _torch_threads(threads):
        return train_subset_model(
            job.config, job.model_index, job.class_mask, data, job.sample_mask
        )


def run_group(jobs, data, threads=None):
    """Trains jobs that share a config as one group (see :mod:`.grouped`)."""
    from .grouped import train_subset_models_grouped

    sample_masks = None
    if any(job.sample_mask is not None for job in jobs):
        sample_masks = [job.sample_mask for job in jobs]
    with _torch_threads(threads):
        return train_subset_models_grouped(
            jobs[0].config,
            [job.model_index for job in jobs],
            np.array([job.class_mask for job in jobs]),
            data,
            sample_masks,
        )


@contextmanager
def _torch_threads(threads):
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@runtime_checkable
class Executor(Protocol):
    """Where models train: what the engine needs of an executor.

    ``check(config)`` refuses, before any work, what it cannot run (bad
    options, an unreachable cluster, missing resources); ``run(jobs, data,
    on_done)`` trains the :class:`ModelJob` s, calls ``on_done(row, outputs)``
    on the driver for each finished one and returns ``{row: reason}`` for
    the ones that failed. :class:`LocalExecutor` and :class:`RayExecutor`
    are the two this package has; any object with these methods will do.
    """

    def check(self, config: InfluenceConfig) -> None: ...

    def run(self, jobs: list[ModelJob], data, on_done: Callable[[int, dict], None]) -> dict: ...


class LocalExecutor:
    """Trains the models in this process, one after another or in groups.

    Args:
        threads: torch threads per model (default: torch's current setting)
        group_size: models trained at once as one batched computation
            (``resnet_small`` only; see :mod:`.grouped`): an integer, or
            ``"auto"``: as many as fit in memory on a GPU (measured once
            per device and network shape: :func:`.grouped.auto_group_size`),
            1 on a CPU (measured slower there). Grouped models match
            one-at-a-time models up to floating-point summation order.
    """

    name = "local"

    def __init__(self, threads=None, group_size="auto"):
        if threads is not None:
            check_int(threads, "threads", 1)
        if group_size != "auto":
            check_int(group_size, "group_size", 1)
        self.threads = threads
        self.group_size = group_size

    def check(self, config):
        """Refuses what this executor cannot run, before any work."""

    def run(self, jobs, data, on_done):
        """Calls ``on_done(row, outputs)`` per finished job; returns ``{row: reason}``.

        A model that raises is reported, not retried (the same inputs give
        the same error); the other models still train.
        """
        failures = {}
        for group in self.groups(list(jobs), data):
            if len(group) > 1:
                try:
                    outputs = run_group(group, data, self.threads)
                except Exception as e:  # noqa: BLE001 - retried one by one, for per-row reasons
                    logger.warning(
                        "a group of %d models failed (%s); training them one by one", len(group), e
                    )
                else:
                    for job, out in zip(group, outputs):
                        on_done(job.row, out)
                    continue
            for job in group:
                try:
                    outputs = run_job(job, data, self.threads)
                except Exception as e:  # noqa: BLE001 - reported by row; Ctrl-C still stops
                    logger.warning("model row %d failed: %s", job.row, e)
                    failures[job.row] = f"{type(e).__name__}: {e}"
                    continue
                on_done(job.row, outputs)
        return failures

    def groups(self, jobs, data):
        """Consecutive jobs of one config, at most ``group_size`` together."""
        from .grouped import auto_group_size, can_group

        if not jobs:
            return []
        size = self.group_size
        if size == "auto":
            with _torch_threads(self.threads):
                size = auto_group_size(jobs[0].config, data, len(jobs))
        groups = []
        for job in jobs:
            last = groups[-1] if groups else None
            if last and len(last) < size and can_group(job.config) and job.config == last[0].config:
                last.append(job)
            else:
                groups.append([job])
        return groups


def _ray():
    try:
        import ray
    except ImportError as e:
        raise ImportError(
            "the ray executor needs Ray, which is not installed; install it with "
            "pip install 'transferscope[ray]'"
        ) from e
    return ray


def _remote_job(job, data, threads, engine_version):
    # Runs on a Ray worker: refuse a worker whose transferscope computes differently.
    if engine_version != ENGINE_VERSION:
        raise RuntimeError(
            f"this Ray worker runs transferscope engine version {ENGINE_VERSION}, the "
            f"driver {engine_version}; install the same transferscope on every node"
        )
    return run_job(job, data, threads)


class RayExecutor:
    """Trains each model as a Ray task; the driver writes the store.

    Args:
        address: a running cluster's address: ``"auto"`` (the cluster this
            machine belongs to), ``"HOST:PORT"`` (its GCS port, 6379 by
            default) or ``"ray://HOST:PORT"`` (Ray Client)
        cpus_per_model: CPUs each task reserves; it also trains with that
            many torch threads
        gpus_per_model: GPUs each task reserves (fractions share a GPU);
            ``None``: 1 when the config asks for ``device="cuda"``, or for
            ``"auto"`` on a cluster that has GPUs, else 0
        memory_per_model: bytes of RAM each task reserves (``None``: none)
        max_retries: times a task is rerun when its worker or node dies;
            an exception raised by training itself is not retried (the same
            inputs raise it again) and is reported by row
        connect_timeout: seconds to wait for the cluster's port to answer
        images: how the images reach the tasks. ``"object_store"``: copied
            once into Ray's object store (nodes need no shared disk; the
            store must hold them). ``"shared_path"``: each task maps the
            driver's image cache files by path (the cache must be on a
            filesystem every node mounts at the same path; images not read
            from the cache still travel through the store). ``"auto"``:
            by path when every node of the cluster is the driver's machine
            and the images come from the cache, else the object store
    """

    name = "ray"

    def __init__(
        self,
        address="auto",
        cpus_per_model=1,
        gpus_per_model=None,
        memory_per_model=None,
        max_retries=3,
        connect_timeout=10.0,
        images="auto",
    ):
        if not isinstance(address, str) or not address.strip():
            raise ValueError(
                f"ray address must be 'auto', 'HOST:PORT' or 'ray://HOST:PORT'; got {address!r}"
            )
        check_int(cpus_per_model, "cpus_per_model", 1)
        if gpus_per_model is not None and not (
            isinstance(gpus_per_model, (int, float)) and gpus_per_model >= 0
        ):
            raise ValueError(f"gpus_per_model must be a number >= 0; got {gpus_per_model!r}")
        if memory_per_model is not None:
            check_int(memory_per_model, "memory_per_model", 1)
        check_int(max_retries, "max_retries", 0)
        check_choice(images, "images", IMAGE_SHIPPING)
        self.images = images
        self.images_shipped = None  # how the last run shipped them
        self.address = address.strip()
        self.cpus_per_model = cpus_per_model
        self.gpus_per_model = gpus_per_model
        self.memory_per_model = memory_per_model
        self.max_retries = max_retries
        self.connect_timeout = connect_timeout

    # --- connection ---------------------------------------------------------
    @contextmanager
    def session(self):
        """Connected to the cluster for the block: reuses a connection the
        caller made with ``ray.init``, else connects and disconnects after."""
        ray = _ray()
        if ray.is_initialized():
            yield ray
            return
        if self.address != "auto":
            _check_reachable(self.address, self.connect_timeout)
        try:
            ray.init(
                address=self.address,
                log_to_driver=False,
                logging_level=logging.WARNING,
                configure_logging=False,
            )
        except ConnectionError as e:
            raise ConnectionError(
                f"could not connect to the Ray cluster at {self.address!r}: {e}"
            ) from e
        try:
            yield ray
        finally:
            ray.shutdown()

    def resources(self, config):
        """``(cpus, gpus, memory)`` each task reserves for ``config``."""
        gpus = self.gpus_per_model
        if gpus is None:
            if config.device == "cuda":
                gpus = 1
            elif config.device == "auto":
                gpus = 1 if _ray().cluster_resources().get("GPU", 0) > 0 else 0
            else:
                gpus = 0
        return self.cpus_per_model, gpus, self.memory_per_model

    def check(self, config):
        """Connects and refuses a run the cluster cannot hold, before any work."""
        with self.session() as ray:
            cpus, gpus, memory = self.resources(config)
            have = ray.cluster_resources()
        if config.device == "cuda" and gpus == 0:
            raise ValueError("device='cuda' on Ray needs gpus_per_model > 0")
        if config.device == "cpu" and gpus > 0:
            raise ValueError(
                "device='cpu' with gpus_per_model > 0 would hold GPUs it "
                "never uses; set gpus_per_model=0"
            )
        for name, need in (("CPU", cpus), ("GPU", gpus), ("memory", memory)):
            if need and have.get(name, 0) < need:
                raise ValueError(
                    f"the Ray cluster at {self.address!r} has {have.get(name, 0):g} {name} "
                    f"in all; each model asks for {need:g}"
                )

    def image_shipping(self, ray, data):
        """``"shared_path"`` or ``"object_store"`` for this run (see ``images``)."""
        if self.images != "auto":
            return self.images
        arrays = (data.pretrain_images, data.train_images, data.test_images)
        if not all(MappedArrayFile.of(a) for a in arrays):
            return "object_store"
        here = ray.util.get_node_ip_address()
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        same_machine = all(n.get("NodeManagerAddress") == here for n in nodes)
        return "shared_path" if same_machine else "object_store"

    # --- running --------------------------------------------------------------
    def run(self, jobs, data, on_done, poll_seconds=1.0):
        """Submits every job, calls ``on_done(row, outputs)`` as each ends.

        Returns ``{row: reason}`` for the jobs that failed for good.
        """
        jobs = list(jobs)
        if not jobs:
            return {}
        with self.session() as ray:
            return self._run(ray, jobs, data, on_done, poll_seconds)

    def _run(self, ray, jobs, data, on_done, poll_seconds):
        cpus, gpus, memory = self.resources(jobs[0].config)
        resources = dict(num_cpus=cpus, num_gpus=gpus)
        if memory:
            resources["memory"] = memory
        task = ray.remote(_remote_job).options(
            max_retries=self.max_retries, retry_exceptions=False, **resources
        )
        self.images_shipped = self.image_shipping(ray, data)
        logger.info("ray: images via %s", self.images_shipped)
        if self.images_shipped == "shared_path":
            data = data.by_reference()
        data_ref = ray.put(data)  # once in the object store, shared by every task
        in_flight = {task.remote(job, data_ref, cpus, ENGINE_VERSION): job.row for job in jobs}
        failures = {}
        started = time.monotonic()
        try:
            while in_flight:
                ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=poll_seconds)
                for ref in ready:
                    row = in_flight.pop(ref)
                    try:
                        outputs = ray.get(ref)
                    except ray.exceptions.RayTaskError as e:  # training raised
                        failures[row] = f"{type(e.cause).__name__}: {e.cause}"
                    except ray.exceptions.RayError as e:  # worker or node lost, retries spent
                        failures[row] = (
                            f"{type(e).__name__} after {self.max_retries} "
                            f"retries: {str(e).splitlines()[0]}"
                        )
                    else:
                        on_done(row, outputs)
                        continue
                    logger.warning("model row %d failed: %s", row, failures[row])
        finally:
            for ref in in_flight:  # interrupted: do not leave tasks running
                ray.cancel(ref, force=True)
        logger.info("ray: %d models in %.1f s", len(jobs), time.monotonic() - started)
        return failures


def make_executor(executor="local", **options):
    """An executor from its name (``"local"`` or ``"ray"``) and options, or as given."""
    if not isinstance(executor, str):
        if not isinstance(executor, Executor):
            raise ValueError(
                f"executor must be one of {EXECUTORS} or an executor; got {executor!r}"
            )
        return executor
    if executor == "local":
        unknown = set(options) - {"threads", "group_size"}
        if unknown:
            raise ValueError(f"options {sorted(unknown)} apply to the ray executor only")
        return LocalExecutor(**options)
    if executor == "ray":
        return RayExecutor(**options)
    raise ValueError(f"executor must be one of {EXECUTORS}; got {executor!r}")


def _check_reachable(address, timeout):
    """Fails fast, naming the address, when nothing listens there."""
    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(
            f"ray address must be 'auto', 'HOST:PORT' or 'ray://HOST:PORT'; got {address!r}"
        )
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise ConnectionError(
            f"cannot reach the Ray cluster at {address!r} ({e.strerror or e}); is it running?"
        ) from e
    # something listens; Ray's head (GCS) and client server speak gRPC, that is
    # HTTP/2, which answers a client's preface with a SETTINGS frame. A listener
    # that does not would make ray.init wait for minutes
    if not _answers_http2(host, int(port), timeout):
        raise ConnectionError(
            f"{address!r} accepts connections but does not answer as a "
            f"Ray cluster (no HTTP/2 handshake within {timeout:g} s); is "
            f"that the right address?"
        )


_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def _answers_http2(host, port, timeout):
    """Whether ``host:port`` answers an HTTP/2 client preface with a SETTINGS frame."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            conn.settimeout(timeout)
            conn.sendall(_HTTP2_PREFACE + _EMPTY_SETTINGS)
            head = b""
            while len(head) < 9:
                chunk = conn.recv(9 - len(head))
                if not chunk:
                    return False
                head += chunk
            return head[3] == 0x04  # frame type SETTINGS
    except OSError:
        return False
