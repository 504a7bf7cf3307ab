"""Runs a queued delegated operation through FiftyOne's own worker (`fiftyone
delegated launch`), as the App's users do."""

import os
import signal
import subprocess
import sys
import time

import fiftyone.operators.delegated as food
from fiftyone.operators.executor import ExecutionRunState


def run_with_worker(op_id, timeout=240):
    """Starts a worker, waits until the operation ends (or ``timeout`` s), stops
    the worker; returns ``(operation, worker log)``."""
    service = food.DelegatedOperationService()
    exe = os.path.join(os.path.dirname(sys.executable), "fiftyone")
    worker = subprocess.Popen(
        [exe, "delegated", "launch"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.time() + timeout
        while time.time() < deadline:
            op = service.get(op_id)
            if op.run_state in ExecutionRunState.TERMINAL_STATES:
                break
            time.sleep(1)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        log = worker.communicate(timeout=30)[0]
    return op, log
