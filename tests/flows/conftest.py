"""Fixtures of the flow tests: an isolated Prefect home and small manifests.

Every flow run in these tests, in this process or in an ``nst`` subprocess,
uses a temporary Prefect server over a fresh database in a temporary
``PREFECT_HOME``, so the tests never touch the user's Prefect data or a
configured API. The environment is set here, before Prefect is imported.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

_PREFECT_HOME = tempfile.mkdtemp(prefix="nst-flow-tests-prefect-")
atexit.register(shutil.rmtree, _PREFECT_HOME, ignore_errors=True)
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ.pop("PREFECT_API_URL", None)
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

NST = Path(sys.executable).with_name("nst")


@pytest.fixture(scope="session")
def images(content_dir: Path, style_dir: Path) -> dict[str, Path]:
    """The sample images by stem, such as ``astronaut`` and ``shipwreck``."""
    files = sorted(content_dir.iterdir()) + sorted(style_dir.iterdir())
    return {path.stem: path for path in files}


@pytest.fixture
def corrupt_jpeg(tmp_path: Path) -> Path:
    """A ``.jpg`` file holding bytes that no decoder accepts."""
    path = tmp_path / "corrupt.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG " * 20)
    return path


def _run_nst(*args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(NST), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=os.environ.copy()
    )


@pytest.fixture(scope="session")
def run_nst():
    """Function that runs the ``nst`` command in a subprocess: ``run_nst(*args, cwd=...)``."""
    return _run_nst


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def free_port():
    """Function that returns a TCP port on 127.0.0.1 that is free right now."""
    return _free_port


@pytest.fixture(scope="session")
def prefect_server():
    """A temporary Prefect server over a fresh database for flow runs in this process."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
