"""Progress of a batch: a terminal bar or log lines, a Prefect progress artifact
and the closing summary line.

The flow creates one :class:`RunProgress`, calls
:meth:`RunProgress.pair_finished` as each pair's result arrives and
:meth:`RunProgress.finish` at the end. On a terminal the progress is one line
redrawn in place with ``\\r``. Anywhere else (cron, CI, a file), each finished
pair writes one plain line, so that logs stay readable.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO
from uuid import UUID

__all__ = ["RunProgress", "format_duration", "publish_report_link"]

logger = logging.getLogger(__name__)

#: Prefect artifact keys: lowercase letters, digits and dashes only.
PROGRESS_ARTIFACT_KEY = "nst-batch-progress"
LINK_ARTIFACT_KEY = "nst-contact-sheet"

_STATUSES = ("done", "failed", "skipped")


def format_duration(seconds: float) -> str:
    """Format seconds as ``H:MM:SS``, rounded down to whole seconds."""
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


def _in_prefect_run() -> bool:
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def publish_report_link(html_path: str | os.PathLike[str]) -> UUID | None:
    """Create a Prefect link artifact that points at the contact sheet.

    The link is an absolute ``file://`` URL, so it opens on the machine that
    stores the output folder. Outside a flow or task run nothing is created.

    Returns:
        The artifact's id, or ``None`` when no run is active or Prefect's API
        rejected the artifact (logged as a warning).
    """
    if not _in_prefect_run():
        return None
    from prefect.artifacts import create_link_artifact

    url = Path(html_path).resolve().as_uri()
    try:
        return create_link_artifact(
            link=url,
            link_text="Contact sheet (report.html)",
            key=LINK_ARTIFACT_KEY,
            description="Thumbnails, losses and loss curves of every pair",
            _sync=True,
        )
    except Exception as error:  # the report is written already; a failed artifact must not end the run
        logger.warning("Cannot create the contact-sheet link artifact for %s: %s", url, error, exc_info=True)
        return None


class RunProgress:
    """Progress of one batch, shown as pairs finish.

    Args:
        total: Number of pairs in the batch, skipped ones included.
        stream: Where the bar, the lines and the summary go. Defaults to
            ``sys.stderr``.
        interactive: Draw a bar redrawn in place (``True``) or write one line
            per pair (``False``). Defaults to whether ``stream`` is a terminal
            and ``TERM`` is not ``dumb``.
        artifact: Keep a Prefect progress artifact up to date when running
            inside a flow or task run. Defaults to ``True``.
        clock: Source of monotonic time in seconds. Defaults to
            ``time.monotonic``.

    Raises:
        ValueError: When ``total`` is negative.
    """

    def __init__(
        self,
        total: int,
        *,
        stream: TextIO | None = None,
        interactive: bool | None = None,
        artifact: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(total, bool) or not isinstance(total, int) or total < 0:
            raise ValueError(f"total must be a whole number of pairs, at least 0. Got {total!r}")
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        if interactive is None:
            isatty = getattr(self.stream, "isatty", None)
            interactive = bool(isatty and isatty()) and os.environ.get("TERM") != "dumb"
        self.interactive = interactive
        self.counts = dict.fromkeys(_STATUSES, 0)
        self._clock = clock
        self._started = clock()
        self._lock = threading.Lock()
        self._artifact_enabled = artifact
        self._artifact_id: UUID | None = None
        self._artifact_percent: int | None = None
        self._bar_drawn = False
        self._finished = False

    # --- numbers ---

    @property
    def finished(self) -> int:
        """Pairs finished so far, in any status."""
        return sum(self.counts.values())

    @property
    def elapsed(self) -> float:
        """Seconds since the progress was created."""
        return self._clock() - self._started

    def remaining_estimate(self) -> float | None:
        """Estimate the seconds left from the wall-clock rate of pairs run so far.

        Skipped pairs cost no time and are left out of the rate. Returns
        ``None`` before the first pair has run.
        """
        run = self.counts["done"] + self.counts["failed"]
        if run == 0:
            return None
        left = self.total - self.finished
        return self.elapsed / run * left

    def pairs_per_hour(self) -> float | None:
        """Return pairs run (done or failed) per wall-clock hour, ``None`` before any ran."""
        run = self.counts["done"] + self.counts["failed"]
        elapsed = self.elapsed
        if run == 0 or elapsed <= 0:
            return None
        return run / elapsed * 3600

    # --- events ---

    def start(self) -> None:
        """Show the empty bar and create the progress artifact.

        Calling it is optional: the first finished pair does the same.
        """
        with self._lock:
            self._start_artifact()
            if self.interactive:
                self._draw_bar()

    def pairs_skipped(self, count: int) -> None:
        """Count pairs skipped before the run, such as those done by an earlier run.

        They are shown at once, with one log line for all of them.

        Raises:
            ValueError: When ``count`` is negative or more than the pairs left.
        """
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= self.total - self.finished:
            raise ValueError(
                f"count must be a whole number from 0 to the {self.total - self.finished} pairs left. Got {count!r}"
            )
        if count == 0:
            return
        with self._lock:
            self.counts["skipped"] += count
            self._start_artifact()
            if self.interactive:
                self._draw_bar()
            else:
                self._write_line(f"{count} pairs already done,", "skipped")
            self._update_artifact()

    def pair_finished(self, pair_id: str, status: str) -> None:
        """Count one finished pair and update the bar, the log line and the artifact.

        Args:
            pair_id: The pair's id, shown in the log line.
            status: ``done``, ``failed`` or ``skipped``.

        Raises:
            ValueError: When ``status`` is not one of those.
        """
        if status not in _STATUSES:
            raise ValueError(f"status must be one of {', '.join(_STATUSES)}. Got {status!r}")
        with self._lock:
            self.counts[status] += 1
            self._start_artifact()
            if self.interactive:
                self._draw_bar()
            else:
                self._write_line(f"pair {pair_id}", status)
            self._update_artifact()

    def finish(self, report: str | os.PathLike[str] | None = None) -> str:
        """End the bar, write the summary line and link the contact sheet.

        Args:
            report: The contact sheet (``report.html``) or report file to name
                in the summary. A contact sheet that exists also gets a Prefect
                link artifact. Defaults to naming none.

        Returns:
            The summary line, without its line break.
        """
        with self._lock:
            self._finished = True
            self._start_artifact()
            self._update_artifact(force=True)
            line = self.summary(report)
            if self.interactive and self._bar_drawn:
                self._draw_bar()
                self.stream.write("\n")
            self.stream.write(line + "\n")
            self.stream.flush()
        if report is not None and Path(report).suffix == ".html" and Path(report).is_file() and self._artifact_enabled:
            publish_report_link(report)
        return line

    def summary(self, report: str | os.PathLike[str] | None = None) -> str:
        """Return the one-line summary: counts by status, wall time, pairs per hour, report."""
        counts = ", ".join(f"{self.counts[status]} {status}" for status in _STATUSES)
        rate = self.pairs_per_hour()
        parts = [
            f"{self.finished} of {self.total} pairs finished ({counts})",
            f"wall time {format_duration(self.elapsed)}",
            f"{rate:.1f} pairs/hour" if rate is not None else "no pairs run",
        ]
        if report is not None:
            parts.append(f"report: {Path(report).resolve()}")
        return "; ".join(parts)

    # --- output ---

    def _status_text(self) -> str:
        left = self.remaining_estimate()
        skipped = f" skipped {self.counts['skipped']}" if self.counts["skipped"] else ""
        return (
            f"{self.finished}/{self.total} done {self.counts['done']} failed {self.counts['failed']}{skipped}"
            f" | {format_duration(self.elapsed)} elapsed"
            f" | {'~' + format_duration(left) if left is not None else '-:--:--'} left"
        )

    def _draw_bar(self) -> None:
        width = 20
        filled = width if self.total == 0 else round(width * self.finished / self.total)
        line = f"[{'#' * filled}{'-' * (width - filled)}] {self._status_text()}"
        # A line longer than the terminal wraps, and \r then redraws only its
        # last part, so the bar is cut to the terminal's width.
        columns = shutil.get_terminal_size(fallback=(120, 24)).columns
        # The cursor goes back to the start of the line after each frame, so
        # that a log line written next by Prefect (in this process or in a
        # worker) overwrites the bar instead of being appended to it.
        # NOTE: A log line shorter than the bar leaves the bar's tail visible
        # until the next frame. The bar is kept to about 75 columns for that reason.
        self.stream.write("\r\x1b[K" + line[: max(columns - 1, 20)] + "\r")
        self.stream.flush()
        self._bar_drawn = True

    def _write_line(self, subject: str, status: str) -> None:
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.stream.write(f"{stamp} {subject} {status}; {self._status_text()}\n")
        self.stream.flush()

    # --- Prefect artifact ---

    def _start_artifact(self) -> None:
        if not self._artifact_enabled or self._artifact_id is not None or not _in_prefect_run():
            return
        from prefect.artifacts import create_progress_artifact

        try:
            self._artifact_id = create_progress_artifact(
                progress=self._percent(),
                key=PROGRESS_ARTIFACT_KEY,
                description=f"Pairs finished out of {self.total}",
                _sync=True,
            )
        except Exception as error:  # progress is only a view; a failed artifact must not end the run
            logger.warning("Cannot create the progress artifact, going on without it: %s", error, exc_info=True)
            self._artifact_enabled = False

    def _update_artifact(self, *, force: bool = False) -> None:
        if self._artifact_id is None:
            return
        percent = self._percent()
        # One update per whole percent keeps a batch of thousands of pairs from
        # sending thousands of API calls.
        if not force and int(percent) == self._artifact_percent:
            return
        from prefect.artifacts import update_progress_artifact

        try:
            update_progress_artifact(self._artifact_id, progress=percent, _sync=True)
        except Exception as error:  # as above: never end the run for a view
            logger.warning("Cannot update progress artifact %s: %s", self._artifact_id, error, exc_info=True)
            return
        self._artifact_percent = int(percent)

    def _percent(self) -> float:
        return 100.0 if self.total == 0 else 100.0 * self.finished / self.total
