"""Nightly runs: a scheduled deployment of the ``nst-batch`` flow on a Prefect server.

A schedule lives on a Prefect server, so `deploy_schedule` needs
``PREFECT_API_URL`` to point at one that responds. The temporary server that
Prefect starts for a single flow run stops with that run, and its schedules
with it. The deployment runs on a process work pool. Its pull step sets the
working directory to this checkout, so a worker on the same machine runs the
code that is checked out there.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "CHECKOUT",
    "ENTRYPOINT",
    "ScheduledDeployment",
    "PrefectServerError",
    "check_prefect_server",
    "check_timezone",
    "deploy_schedule",
    "ensure_process_pool",
    "next_run_time",
]

logger = logging.getLogger(__name__)

#: Root of this checkout: the working directory of every scheduled run.
CHECKOUT = Path(__file__).resolve().parents[1]

#: The flow's entrypoint, relative to `CHECKOUT`.
ENTRYPOINT = "flows/batch.py:run_batch"


class PrefectServerError(RuntimeError):
    """No Prefect server is configured, or the configured one does not respond."""


@dataclasses.dataclass(frozen=True)
class ScheduledDeployment:
    """A deployment created or updated by `deploy_schedule`.

    Attributes:
        name: Full deployment name, ``nst-batch/<name>``.
        deployment_id: The deployment's id on the server.
        work_pool: Name of the process work pool that runs it.
        cron: The cron expression.
        timezone: IANA time zone in which the cron expression is read.
        next_run: The next time the schedule fires, in ``timezone``.
        parameters: The flow parameters of every scheduled run.
    """

    name: str
    deployment_id: str
    work_pool: str
    cron: str
    timezone: str
    next_run: datetime.datetime
    parameters: dict[str, Any]


def check_prefect_server(timeout: float = 5.0) -> str:
    """Return the configured Prefect API URL after checking that its server responds.

    The check is one ``GET /health`` without retries, so a missing server is
    reported within ``timeout`` seconds.

    Args:
        timeout: Seconds to wait for the response. Defaults to 5.

    Raises:
        PrefectServerError: If ``PREFECT_API_URL`` is unset, or the server
            cannot be reached or is not healthy.
    """
    import httpx
    from prefect.settings import PREFECT_API_KEY, PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise PrefectServerError(
            "No Prefect server is configured, and Prefect's temporary server cannot hold a schedule. "
            "Start one with 'prefect server start' and run "
            "'prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api'"
        )
    api_key = PREFECT_API_KEY.value()
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(f"{url.rstrip('/')}/health", headers=headers, timeout=timeout)
    except httpx.TransportError as error:
        raise PrefectServerError(
            f"The Prefect server at {url} does not respond ({type(error).__name__}: {error}). "
            "Check that 'prefect server start' is running and PREFECT_API_URL points at it"
        ) from error
    if response.is_error:
        raise PrefectServerError(
            f"The Prefect server at {url} failed its health check with HTTP {response.status_code}. "
            "Check PREFECT_API_URL, and PREFECT_API_KEY for Prefect Cloud"
        )
    return url


def next_run_time(cron: str, timezone: str = "UTC", after: datetime.datetime | None = None) -> datetime.datetime:
    """Return the first time after ``after`` (default: now) at which ``cron`` fires in ``timezone``.

    The dates come from the Prefect server's own cron schedule, so they match
    the runs that the server will create.

    Raises:
        ValueError: If ``cron`` is not a valid cron expression or ``timezone``
            is not an IANA time zone name.
    """
    from pydantic import ValidationError
    from prefect.server.schemas.schedules import CronSchedule
    from prefect.utilities.asyncutils import run_coro_as_sync

    check_timezone(timezone)
    try:
        schedule = CronSchedule(cron=cron, timezone=timezone)
    except ValidationError as error:
        raise ValueError(
            f"Invalid cron expression '{cron}'. Use five fields: minute hour day month weekday, "
            "such as '0 1 * * *' for 01:00 every night"
        ) from error
    start = after or datetime.datetime.now(datetime.timezone.utc)
    never_fires = f"The cron expression '{cron}' never fires. Check the day and month fields"
    try:
        dates = run_coro_as_sync(schedule.get_dates(n=1, start=start + datetime.timedelta(seconds=1)))
    except ValueError as error:
        # cronsim raises when no date matches, such as for February 31.
        raise ValueError(never_fires) from error
    if not dates:
        raise ValueError(never_fires)
    return dates[0].astimezone(ZoneInfo(timezone))


def check_timezone(timezone: str) -> None:
    """Raise `ValueError` naming ``timezone`` unless it is an IANA time zone name, such as ``Europe/Berlin``."""
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise ValueError(
            f"Unknown time zone '{timezone}'. Use an IANA name such as 'UTC' or 'Europe/Berlin'"
        ) from error


def ensure_process_pool(name: str) -> bool:
    """Create the process work pool ``name`` unless it exists, and return whether it was created.

    Raises:
        ValueError: If a pool of that name exists with another worker type.
    """
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(
                WorkPoolCreate(
                    name=name, type="process", base_job_template=ProcessWorker.get_default_base_job_template()
                )
            )
            logger.info("Created process work pool %s", name)
            return True
    if pool.type != "process":
        raise ValueError(
            f"Work pool '{name}' has type '{pool.type}', but the batch needs a 'process' pool. "
            "Choose another --pool name"
        )
    return False


def deploy_schedule(
    parameters: dict[str, Any],
    *,
    cron: str,
    name: str = "nightly",
    pool: str = "nst",
    timezone: str = "UTC",
) -> ScheduledDeployment:
    """Create or update the scheduled deployment ``nst-batch/<name>`` on the configured server.

    Args:
        parameters: Parameters of every scheduled run of `flows.batch.run_batch`,
            with absolute paths because the worker resolves them in `CHECKOUT`.
        cron: Cron expression, such as ``"0 1 * * *"`` for 01:00 every night.
        name: Deployment name. Defaults to ``"nightly"``.
        pool: Process work pool, created when missing. Defaults to ``"nst"``.
        timezone: IANA time zone of ``cron``. Defaults to ``"UTC"``.

    Raises:
        PrefectServerError: If no Prefect server is configured or it does not respond.
        ValueError: If ``cron`` or ``timezone`` is invalid, or ``pool`` is not a process pool.
    """
    from prefect.schedules import Cron

    from flows.batch import run_batch

    next_run = next_run_time(cron, timezone)
    check_prefect_server()
    ensure_process_pool(pool)

    flow = run_batch.from_source(source=str(CHECKOUT), entrypoint=ENTRYPOINT)
    deployment = flow.to_deployment(
        name,
        schedule=Cron(cron, timezone=timezone),
        parameters=parameters,
        work_pool_name=pool,
        description=f"Runs the nst-batch flow from {CHECKOUT} on the schedule '{cron}' ({timezone}).",
    )
    deployment_id = deployment.apply(work_pool_name=pool)
    logger.info("Deployed %s/%s on pool %s with schedule '%s' (%s)", run_batch.name, name, pool, cron, timezone)
    return ScheduledDeployment(
        name=f"{run_batch.name}/{name}",
        deployment_id=str(deployment_id),
        work_pool=pool,
        cron=cron,
        timezone=timezone,
        next_run=next_run,
        parameters=dict(parameters),
    )
