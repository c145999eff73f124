"""Nightly runs on a real Prefect server: deploy, schedule, and a run picked up by a process worker.

The tests run the commands of docs/operations.md on 127.0.0.1 and free
ports: ``prefect server start`` over a fresh SQLite database in a temporary
``PREFECT_HOME``, ``prefect config set``, ``prefect work-pool create``,
``prefect deploy`` with the repository's prefect.yaml, ``nst schedule`` and
``prefect worker start``.
"""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest

from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.client.schemas.sorting import FlowRunSort

from flows.cli import main
from flows.report import read_report

pytestmark = pytest.mark.slow

REPOSITORY = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
POOL = "nst"


class PrefectSite:
    """A running Prefect server and the environment of commands that use it."""

    def __init__(self, home: Path, api_url: str) -> None:
        self.home = home
        self.api_url = api_url
        self.env = {
            **os.environ,
            "PREFECT_HOME": str(home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
        }
        # The profile set by `prefect config set` must decide the API URL, as in the guide.
        self.env.pop("PREFECT_API_URL", None)

    def run(self, *command: str, cwd: Path = REPOSITORY, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(command), cwd=cwd, capture_output=True, text=True, timeout=timeout, env={**self.env, **env}
        )

    def client(self):
        from prefect.client.orchestration import SyncPrefectClient

        return SyncPrefectClient(self.api_url)


def start_process(command: list[str], log: Path, env: dict[str, str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        command, cwd=cwd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True
    )


def stop_process(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def wait_for_health(url: str, process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"prefect server exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"prefect server did not respond on {url}/health within {timeout} s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def prefect_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectSite]:
    """``prefect server start`` on a free loopback port, with the API URL set in a fresh profile."""
    import socket

    home = tmp_path_factory.mktemp("prefect-home")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    site = PrefectSite(home, f"http://127.0.0.1:{port}/api")
    log = home / "server.log"
    server = start_process(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)], log, site.env, home
    )
    try:
        wait_for_health(site.api_url, server, log)
        configured = site.run(str(BIN / "prefect"), "config", "set", f"PREFECT_API_URL={site.api_url}")
        assert configured.returncode == 0, configured.stderr
        yield site
    finally:
        stop_process(server)
    # Only telemetry is checked: on a busy machine the SQLite database can log
    # "database is locked" for a worker heartbeat, which the server survives.
    server_log = log.read_text()
    assert "telemetry" not in server_log.lower(), server_log


@pytest.fixture(scope="module")
def worker(prefect_site: PrefectSite) -> Iterator[Path]:
    """``prefect worker start --pool nst`` with ``NST_CHECKOUT`` set, as the guide's service runs it."""
    created = prefect_site.run(str(BIN / "prefect"), "work-pool", "create", POOL, "--type", "process")
    assert created.returncode == 0, created.stdout + created.stderr
    log = prefect_site.home / "worker.log"
    env = {**prefect_site.env, "NST_CHECKOUT": str(REPOSITORY), "PREFECT_WORKER_QUERY_SECONDS": "1"}
    process = start_process(
        [str(BIN / "prefect"), "worker", "start", "--pool", POOL], log, env, prefect_site.home
    )
    try:
        yield log
    finally:
        stop_process(process)


def write_manifest(folder: Path, images: dict[str, Path]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "nightly.yaml"
    manifest.write_text(
        textwrap.dedent(
            f"""
            defaults: {{size: 64, steps: 5}}
            pairs:
              - {{content: "{images['astronaut']}", style: "{images['shipwreck']}"}}
              - {{content: "{images['rocket']}", style: "{images['shipwreck']}"}}
            """
        ),
        encoding="utf-8",
    )
    return manifest


def next_one_am(zone: str) -> datetime.datetime:
    """The next 01:00 in ``zone``, the expected first run of the cron ``0 1 * * *``."""
    now = datetime.datetime.now(ZoneInfo(zone))
    candidate = now.replace(hour=1, minute=0, second=0, microsecond=0)
    if candidate <= now:
        candidate = (now + datetime.timedelta(days=1)).replace(hour=1, minute=0, second=0, microsecond=0)
    return candidate


def wait_for_final_state(site: PrefectSite, flow_run_id, worker_log: Path, timeout: float = 300):
    deadline = time.monotonic() + timeout
    with site.client() as client:
        while time.monotonic() < deadline:
            flow_run = client.read_flow_run(flow_run_id)
            if flow_run.state is not None and flow_run.state.is_final():
                return flow_run
            time.sleep(1)
    pytest.fail(f"flow run {flow_run_id} did not finish within {timeout} s; worker log:\n{worker_log.read_text()}")


def test_prefect_yaml_deploys_nightly_schedule(
    prefect_site: PrefectSite, worker: Path, tmp_path: Path, images: dict[str, Path], standin_weights: Path
) -> None:
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    manifest = write_manifest(tmp_path, images)
    output_dir = tmp_path / "nightly-outputs"

    deployed = prefect_site.run(
        str(BIN / "prefect"), "--no-prompt", "deploy", "--name", "nightly",
        NST_MANIFEST=str(manifest), NST_OUTPUT_DIR=str(output_dir),
    )
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    with prefect_site.client() as client:
        deployment = client.read_deployment_by_name("nst-batch/nightly")
    schedules = [(item.schedule.cron, item.schedule.timezone, item.active) for item in deployment.schedules]
    assert schedules == [("0 1 * * *", "UTC", True)]
    assert deployment.parameters["manifest"] == str(manifest)
    assert deployment.parameters["output_dir"] == str(output_dir)
    assert deployment.work_pool_name == POOL
    assert deployment.pull_steps == [
        {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $NST_CHECKOUT }}"}}
    ]

    with temporary_settings({PREFECT_API_URL: prefect_site.api_url}):
        flow_run = run_deployment(
            "nst-batch/nightly", parameters={"weights": str(standin_weights)}, timeout=0
        )
    finished = wait_for_final_state(prefect_site, flow_run.id, worker)
    frame = read_report(output_dir / "report.csv")

    assert finished.state.is_completed(), f"{finished.state}\n{worker.read_text()}"
    assert sorted(frame["pair_id"]) == ["astronaut__shipwreck", "rocket__shipwreck"]
    assert set(frame["status"]) == {"done"}
    assert (output_dir / "astronaut__shipwreck.png").is_file()
    assert (output_dir / "rocket__shipwreck.png").is_file()
    assert "done astronaut__shipwreck" in worker.read_text()
    assert scheduled_start_times(prefect_site, deployment.id)[0] == next_one_am("UTC")


def scheduled_start_times(site: PrefectSite, deployment_id, timeout: float = 60) -> list[datetime.datetime]:
    """The start times of the runs that the server's scheduler created for a deployment."""
    deadline = time.monotonic() + timeout
    with site.client() as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
                sort=FlowRunSort.EXPECTED_START_TIME_ASC,
            )
            times = [run.expected_start_time for run in runs if run.state is not None and run.state.is_scheduled()]
            if times:
                return times
            time.sleep(1)
    pytest.fail(f"the server created no scheduled run of deployment {deployment_id} within {timeout} s")


def test_nst_schedule_creates_cron_deployment(
    prefect_site: PrefectSite, tmp_path: Path, images: dict[str, Path], standin_weights: Path
) -> None:
    manifest = write_manifest(tmp_path, images)

    output_dir = tmp_path / "cli-outputs"

    result = prefect_site.run(
        str(BIN / "nst"), "schedule", str(manifest), "--cron", "0 1 * * *", "--timezone", "Europe/Berlin",
        "--output-dir", str(output_dir), "--name", "nightly-cli", "--pool", "nst-cli",
        "--weights", str(standin_weights), "--set", "steps=4", "--cluster", "tcp://127.0.0.1:8786",
        cwd=tmp_path,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    expected_next = next_one_am("Europe/Berlin")
    assert "Deployment: nst-batch/nightly-cli" in result.stdout
    assert "Schedule: 0 1 * * * (Europe/Berlin)" in result.stdout
    assert f"Next run: {expected_next.isoformat()}" in result.stdout
    assert f"Output folder: {output_dir}" in result.stdout

    with prefect_site.client() as client:
        deployment = client.read_deployment_by_name("nst-batch/nightly-cli")
        pool = client.read_work_pool("nst-cli")
    assert pool.type == "process"
    assert deployment.work_pool_name == "nst-cli"
    assert [(item.schedule.cron, item.schedule.timezone) for item in deployment.schedules] == [
        ("0 1 * * *", "Europe/Berlin")
    ]
    assert deployment.parameters == {
        "manifest": str(manifest),
        "output_dir": str(output_dir),
        "weights": str(standin_weights.resolve()),
        "defaults": {"steps": "4"},
        "cluster": "tcp://127.0.0.1:8786",
    }
    assert deployment.pull_steps == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(REPOSITORY)}}
    ]
    assert deployment.entrypoint == "flows/batch.py:run_batch"

    # The guide's "start a run now" command; no worker polls nst-cli, so the run waits.
    started = prefect_site.run(str(BIN / "prefect"), "deployment", "run", "nst-batch/nightly-cli")
    assert started.returncode == 0, started.stdout + started.stderr
    with prefect_site.client() as client:
        flow_runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
        )
    now = datetime.datetime.now(datetime.timezone.utc)
    waiting = [run for run in flow_runs if run.expected_start_time <= now]
    assert len(waiting) == 1
    assert waiting[0].state.is_scheduled()
    assert waiting[0].parameters["cluster"] == "tcp://127.0.0.1:8786"


def test_schedule_without_server_exits_2(
    tmp_path: Path, images: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    manifest = write_manifest(tmp_path, images)

    # Other flow tests may have set the API URL of a test server for this process.
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        code = main(["schedule", str(manifest), "--cron", "0 1 * * *", "--weights", "random"])
    stderr = capsys.readouterr().err

    assert code == 2
    assert "No Prefect server is configured" in stderr
    assert "prefect server start" in stderr


def test_schedule_with_silent_server_exits_2(
    tmp_path: Path, images: dict[str, Path], free_port, capsys: pytest.CaptureFixture[str]
) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    manifest = write_manifest(tmp_path, images)
    url = f"http://127.0.0.1:{free_port()}/api"

    with temporary_settings({PREFECT_API_URL: url}):
        code = main(["schedule", str(manifest), "--cron", "0 1 * * *", "--weights", "random"])
    stderr = capsys.readouterr().err

    assert code == 2
    assert f"The Prefect server at {url} does not respond" in stderr


def test_schedule_with_unhealthy_server_exits_2(
    tmp_path: Path, images: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    import http.server
    import threading

    from prefect.settings import PREFECT_API_URL, temporary_settings

    class Unavailable(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    manifest = write_manifest(tmp_path, images)
    server = http.server.HTTPServer(("127.0.0.1", 0), Unavailable)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/api"
    try:
        with temporary_settings({PREFECT_API_URL: url}):
            code = main(["schedule", str(manifest), "--cron", "0 1 * * *", "--weights", "random"])
    finally:
        server.shutdown()
        server.server_close()
    stderr = capsys.readouterr().err

    assert code == 2
    assert f"The Prefect server at {url} failed its health check with HTTP 503" in stderr


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--cron", "0 25 * * *", "Invalid cron expression '0 25 * * *'"),
        ("--cron", "0 0 31 2 *", "The cron expression '0 0 31 2 *' never fires"),
        ("--timezone", "Mars/Olympus", "Unknown time zone 'Mars/Olympus'"),
        ("--cluster", "localhost:8786", "Invalid cluster address 'localhost:8786'"),
    ],
)
def test_schedule_rejects_bad_option(
    tmp_path: Path, images: dict[str, Path], capsys: pytest.CaptureFixture[str], option: str, value: str, message: str
) -> None:
    manifest = write_manifest(tmp_path, images)
    arguments = {"--cron": "0 1 * * *", "--timezone": "UTC", option: value}
    argv = ["schedule", str(manifest), "--weights", "random"]
    for name, item in arguments.items():
        argv += [name, item]

    code = main(argv)
    stderr = capsys.readouterr().err

    assert code == 2
    assert message in stderr


def test_schedule_invalid_manifest_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = tmp_path / "nightly.yaml"
    manifest.write_text("pairs:\n  - {content: gone.png, style: missing.jpg}\n", encoding="utf-8")

    code = main(["schedule", str(manifest), "--cron", "0 1 * * *", "--weights", "random"])
    stderr = capsys.readouterr().err

    assert code == 2
    assert "content image 'gone.png' not found" in stderr
