"""Runs a command against a throwaway Ray cluster on this machine, loopback only.

    unshare -n python scripts/ray_local_cluster.py --workers 1 -- python driver.py

Starts a head node and ``--workers`` worker nodes (each its own process
group), runs the command with ``RAY_ADDRESS`` set and
``TS_RAY_WORKER_PGIDS`` listing the worker nodes' process groups (so a test
can kill one, as a lost node), then kills every node it started.

Why a network namespace: Ray 2.60 binds the machine's network interface even
when told 127.0.0.1; inside ``unshare -n`` only loopback exists. Nothing here
touches Ray processes it did not start (no ``ray stop``).
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time


def _ray_bin():
    return os.path.join(os.path.dirname(sys.executable), "ray")


def _start_node(args, log_path):
    log = open(log_path, "w")
    return subprocess.Popen(
        [_ray_bin(), "start", "--block", "--disable-usage-stats", *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _wait_for_nodes(address, count, timeout):
    """Waits until ``count`` nodes are alive (asked from a short-lived driver)."""
    probe = (
        "import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False, "
        "logging_level='ERROR'); print(sum(n['Alive'] for n in ray.nodes()))"
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run([sys.executable, "-c", probe, address], capture_output=True, text=True)
        if (
            out.returncode == 0
            and out.stdout.strip().isdigit()
            and int(out.stdout.strip()) >= count
        ):
            return
        time.sleep(1)
    raise RuntimeError(f"the local Ray cluster did not reach {count} nodes in {timeout} s")


def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1, help="worker nodes besides the head")
    parser.add_argument("--head-cpus", type=int, default=1)
    parser.add_argument("--worker-cpus", type=int, default=1)
    parser.add_argument("--port", type=int, default=6390)
    parser.add_argument("--object-store-bytes", type=int, default=200 * 1024**2)
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to run")

    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    temp_dir = tempfile.mkdtemp(prefix="ts-ray-")
    address = f"127.0.0.1:{args.port}"
    common = ["--node-ip-address=127.0.0.1", f"--object-store-memory={args.object_store_bytes}"]
    env_nodes = []
    try:
        env_nodes.append(
            _start_node(
                [
                    "--head",
                    f"--port={args.port}",
                    f"--num-cpus={args.head_cpus}",
                    "--num-gpus=0",
                    "--include-dashboard=false",
                    f"--temp-dir={temp_dir}",
                    *common,
                ],
                os.path.join(temp_dir, "head.log"),
            )
        )
        _wait_for_nodes(address, 1, args.timeout)
        for i in range(args.workers):
            env_nodes.append(
                _start_node(
                    [
                        f"--address={address}",
                        f"--num-cpus={args.worker_cpus}",
                        "--num-gpus=0",
                        *common,
                    ],
                    os.path.join(temp_dir, f"worker{i}.log"),
                )
            )
        _wait_for_nodes(address, 1 + args.workers, args.timeout)
        env = dict(
            os.environ,
            RAY_ADDRESS=address,
            TS_RAY_WORKER_PGIDS=",".join(str(p.pid) for p in env_nodes[1:]),
        )
        return subprocess.run(command, env=env).returncode
    finally:
        for proc in reversed(env_nodes):
            _kill_group(proc)
        shutil.rmtree(temp_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
