"""The Dask cluster behind a batch: one long-lived worker per device.

A local cluster gets one worker process per CUDA GPU (or ``workers`` CPU
processes that split the cores), each with one thread. A `DeviceAssignment`
plugin sets each worker's ``NST_DEVICE`` environment variable to its device
and sets its torch thread count. Workers of a remote cluster started
with ``dask worker`` read ``NST_DEVICE`` from their own environment, or use
the first CUDA GPU when it is unset and the CPU when there is none.

A worker process keeps ``nst_core``'s feature-extractor cache between pairs,
so each worker loads the model once per weights, device and depth.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import socket
from collections.abc import Iterator
from typing import Any

import dask
from distributed import WorkerPlugin, get_worker
from prefect_dask import DaskTaskRunner

__all__ = [
    "DEVICE_ENV",
    "ClusterPlan",
    "DeviceAssignment",
    "plan_cluster",
    "make_task_runner",
    "local_cluster_options",
    "LocalWorkers",
    "start_task_runner",
    "shared_api_settings",
    "worker_device",
    "worker_label",
]

logger = logging.getLogger(__name__)

#: Environment variable that names a worker's device, such as ``cuda:1``.
DEVICE_ENV = "NST_DEVICE"

_ADDRESS_PATTERN = re.compile(r"^(tcp|tls)://[^\s:/]+:\d+$")


@dataclasses.dataclass(frozen=True)
class ClusterPlan:
    """Placement of a batch's tasks: an existing cluster, or local workers and their devices.

    Attributes:
        address: Scheduler address of an existing cluster, or ``None`` for a
            local cluster.
        devices: One device per local worker, in worker-name order (empty for
            a remote cluster).
        threads: Torch threads per local worker.
    """

    address: str | None
    devices: tuple[str, ...]
    threads: int

    def describe(self) -> str:
        """Return a one-line description for logs."""
        if self.address is not None:
            return f"Dask cluster at {self.address}"
        if self.devices[0] == "cpu":
            return f"local Dask cluster: {len(self.devices)} CPU workers, {self.threads} torch threads each"
        return f"local Dask cluster: one worker per device ({', '.join(self.devices)})"


def plan_cluster(
    devices: list[str] | None = None,
    workers: int | None = None,
    cluster: str | None = None,
) -> ClusterPlan:
    """Decide the workers of a batch from the user's options.

    Args:
        devices: Devices for local workers, one worker each, such as
            ``["cuda:0", "cuda:2"]``. Defaults to every visible CUDA GPU, or
            the CPU when there is none.
        workers: Number of CPU worker processes when the device is the CPU.
            The cores are split between them. Defaults to 1.
        cluster: Address ``tcp://HOST:PORT`` of a running Dask scheduler. Its
            workers choose their own device (see the module docstring).

    Raises:
        ValueError: If a device does not exist, a device is listed twice,
            ``workers`` is below 1, ``workers`` is combined with GPUs, or
            ``cluster`` is not a scheduler address or is combined with
            ``devices``/``workers``.
    """
    from nst_core.devices import available_devices, parse_device

    if cluster is not None:
        if not _ADDRESS_PATTERN.match(cluster):
            raise ValueError(f"Invalid cluster address '{cluster}'. Use tcp://HOST:PORT of a Dask scheduler")
        if devices or workers is not None:
            raise ValueError(
                "devices and workers apply to the local cluster only. Set NST_DEVICE in the environment "
                "of each remote 'dask worker' instead"
            )
        return ClusterPlan(address=cluster, devices=(), threads=0)

    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be a whole number of at least 1. Got {workers!r}")

    if devices:
        names = [str(parse_device(device)) for device in devices]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"Device {', '.join(repeated)} is listed more than once. List each device once")
    else:
        names = available_devices()

    if names == ["cpu"]:
        count = workers if workers is not None else 1
        threads = max(1, (os.cpu_count() or 1) // count)
        return ClusterPlan(address=None, devices=("cpu",) * count, threads=threads)
    if "cpu" in names:
        raise ValueError(f"Mix of CPU and GPU devices {names}. Use either GPUs or the CPU")
    if workers is not None and workers != len(names):
        raise ValueError(
            f"workers={workers} does not match the {len(names)} GPUs {', '.join(names)}. "
            "Each GPU gets one worker; pick GPUs with devices instead"
        )
    return ClusterPlan(address=None, devices=tuple(names), threads=1)


class DeviceAssignment(WorkerPlugin):
    """Dask worker plugin that gives each local worker its device.

    NOTE: The tests run CPU workers only; the one-worker-per-GPU mapping has
    not been run on a multi-GPU machine.

    Args:
        devices: Device of each worker, indexed by the worker's name (the
            local cluster names its workers 0, 1, ...).
        threads: Torch threads per worker.
    """

    name = "nst-device-assignment"

    def __init__(self, devices: tuple[str, ...], threads: int) -> None:
        self.devices = tuple(devices)
        self.threads = threads

    def setup(self, worker: Any) -> None:
        """Set ``NST_DEVICE`` and the torch thread count of this worker process."""
        import torch

        try:
            device = self.devices[int(worker.name)]
        except (TypeError, ValueError, IndexError):
            logger.warning("Worker %s has no device assigned; it uses the default device", worker.name)
            return
        os.environ[DEVICE_ENV] = device
        torch.set_num_threads(self.threads)


def local_cluster_options(plan: ClusterPlan) -> dict[str, Any]:
    """Return the ``distributed.LocalCluster`` arguments of a local ``plan``.

    One worker process per device with one thread, everything on 127.0.0.1
    and no dashboard.
    """
    return {
        "n_workers": len(plan.devices),
        "threads_per_worker": 1,
        "processes": True,
        "host": "127.0.0.1",
        "dashboard_address": None,
        # The scheduler's HTTP server (health and metrics) runs even without a
        # dashboard; a free loopback port avoids a clash on the default 8787.
        "scheduler_kwargs": {"dashboard_address": "127.0.0.1:0"},
    }


def make_task_runner(plan: ClusterPlan) -> DaskTaskRunner:
    """Build the `DaskTaskRunner` for ``plan``; enter it with `start_task_runner`."""
    if plan.address is not None:
        return DaskTaskRunner(address=plan.address)
    return DaskTaskRunner(cluster_kwargs=local_cluster_options(plan))


class LocalWorkers:
    """A local cluster started ahead of the flow, so that workers boot in parallel with it.

    Starting worker processes (imports of torch and Prefect) takes seconds. The
    ``nst`` command starts them while it validates the manifest and Prefect
    starts its server, then hands the flow the scheduler address.

    Args:
        plan: A local cluster plan from `plan_cluster`.
    """

    def __init__(self, plan: ClusterPlan) -> None:
        if plan.address is not None:
            raise ValueError("LocalWorkers needs a local cluster plan, not a scheduler address")
        self.plan = plan
        self._cluster = None
        self._client = None

    def start(self) -> LocalWorkers:
        """Start the scheduler and the workers, and register the device plugin."""
        from distributed import Client, LocalCluster

        with dask.config.set({"distributed.scheduler.worker-saturation": 1.0}):
            self._cluster = LocalCluster(**local_cluster_options(self.plan))
        self._client = Client(self._cluster, set_as_default=False)
        self._client.register_plugin(DeviceAssignment(self.plan.devices, self.plan.threads))
        return self

    @property
    def address(self) -> str:
        """The scheduler address, ``tcp://127.0.0.1:PORT``."""
        if self._cluster is None:
            raise RuntimeError("LocalWorkers.address read before start()")
        return self._cluster.scheduler_address

    def close(self) -> None:
        """Stop the workers and the scheduler."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None


@contextlib.contextmanager
def shared_api_settings() -> Iterator[None]:
    """Make task runs in other processes report to this flow run's Prefect API.

    Without ``PREFECT_API_URL`` the flow runs on a temporary server whose
    address only this process has. Dask workers receive the flow's settings with each
    task, so putting the server's address into them makes every worker report
    to the same server instead of starting its own.
    """
    from prefect.context import FlowRunContext
    from prefect.settings import PREFECT_API_URL, temporary_settings

    context = FlowRunContext.get()
    if PREFECT_API_URL.value() or context is None or context.client is None:
        yield
        return
    with temporary_settings({PREFECT_API_URL: str(context.client.api_url)}):
        yield


def start_task_runner(runner: DaskTaskRunner, plan: ClusterPlan) -> None:
    """Start the cluster of an entered ``runner`` and register the device plugin.

    The scheduler of a local cluster sends a worker one task at a time
    (``worker-saturation`` 1.0), so the next pair goes to the first free worker
    and a slow pair holds back no queued one.
    """
    with dask.config.set({"distributed.scheduler.worker-saturation": 1.0}):
        client = runner.client
    if plan.address is None:
        client.register_plugin(DeviceAssignment(plan.devices, plan.threads))


def check_scheduler(address: str, timeout: float = 15.0) -> None:
    """Raise ValueError unless a Dask scheduler responds at ``address`` within ``timeout`` seconds.

    An address that accepts connections but is not a Dask scheduler (a web
    server, say) would otherwise leave the run waiting for a handshake that
    never comes.
    """
    import asyncio

    from distributed.comm import connect

    async def identify() -> dict:
        comm = await connect(address, timeout=timeout)
        try:
            await comm.write({"op": "identity", "reply": True})
            return await comm.read()
        finally:
            await comm.close()

    try:
        reply = asyncio.run(asyncio.wait_for(identify(), timeout))
    except (OSError, asyncio.TimeoutError, TimeoutError) as error:
        raise ValueError(
            f"No Dask scheduler responded at {address} within {timeout:.0f} s ({type(error).__name__}: {error}). "
            "Check --cluster: it takes the tcp://HOST:PORT that 'dask scheduler' prints"
        ) from error
    if not isinstance(reply, dict) or reply.get("type") != "Scheduler":
        raise ValueError(f"{address} responded, but not as a Dask scheduler. Check --cluster")


def worker_device() -> str:
    """Return the device of the current worker process.

    ``NST_DEVICE`` when set, else the first CUDA GPU, else ``"cpu"``.
    """
    from nst_core.devices import default_device

    return os.environ.get(DEVICE_ENV) or str(default_device())


def worker_label() -> str:
    """Return ``<name> (<address>, <host>)`` of the current Dask worker, or the host outside Dask."""
    host = socket.gethostname()
    try:
        worker = get_worker()
    except ValueError:
        return f"pid {os.getpid()} ({host})"
    return f"{worker.name} ({worker.address}, {host})"
