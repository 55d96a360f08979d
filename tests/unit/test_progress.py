"""Progress output says what is true: plurals, minutes past 90 s, a rate never above the budget, an ETA that
includes verification, no stale live line, and retries summed up instead of one warning each."""

from __future__ import annotations

import io
import logging

from shared.progress import (
    DEFAULT_VERIFY_TAIL_SECONDS,
    Progress,
    RateWindow,
    WarningSummary,
    duration_text,
    eta_seconds,
    plural,
    render_sending,
    shown_rate,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plural_is_singular_for_one():
    assert plural(1, "batch") == "1 batch"
    assert plural(3, "batch") == "3 batches"
    assert plural(0, "row") == "0 rows"
    assert plural(1_000, "request") == "1,000 requests"


def test_durations_are_seconds_below_90_and_minutes_past():
    assert duration_text(0.6) == "0.6s"
    assert duration_text(42.4) == "42s"
    assert duration_text(89) == "89s"
    assert duration_text(90) == "1m30s"
    assert duration_text(585) == "9m45s"
    assert duration_text(3_900) == "1h05m"


def test_the_shown_rate_never_exceeds_the_budget():
    assert shown_rate(330.0, 300) == "300/min"
    assert shown_rate(250.4, 300) == "250/min"
    assert shown_rate(None, 300) == "—/min"


def test_the_rate_is_measured_over_the_last_60_seconds():
    window = RateWindow()
    for second in range(0, 121):
        # 10 requests/s for the first minute, then 2/s: the window sees only the second minute.
        count = 10 * min(second, 60) + 2 * max(0, second - 60)
        window.add(float(second), count)
    assert round(window.per_minute()) == 120


def test_a_rate_over_less_than_two_seconds_is_not_shown():
    window = RateWindow()
    window.add(0.0, 0)
    window.add(1.0, 50)
    assert window.per_minute() is None


def test_eta_counts_the_unsent_batches_at_the_budget_plus_verification():
    # 300 batches left at 300/min = 60 s, 2 polls (500 unconfirmed / 250) = 0.4 s, then the verify tail.
    assert eta_seconds(total=1000, sent=700, confirmed_or_failed=500, rpm=300, verify_tail=12) == 60 + 0.4 + 12


def test_once_everything_is_sent_the_eta_is_the_verification_left():
    assert eta_seconds(total=10, sent=10, confirmed_or_failed=0, rpm=300, verify_tail=5) == 0.2 + 5


def test_nothing_left_means_no_eta():
    assert eta_seconds(total=10, sent=10, confirmed_or_failed=10, rpm=300, verify_tail=5) == 0.0


def test_the_bar_follows_sent_batches_and_shows_confirmed_and_failed():
    line = render_sending(sent=150, confirmed=0, failed=2, total=300, rate=330.0, rpm=300, elapsed=95, eta=70)
    assert line.startswith("sending   [############------------] 150/300 batches sent, 0 confirmed, 2 failed")
    assert "300/min (budget 300)" in line and "1m35s elapsed" in line and "ETA 70s" in line


def test_the_phase_is_verifying_once_every_batch_is_sent():
    line = render_sending(sent=1, confirmed=0, failed=0, total=1, rate=None, rpm=300, elapsed=1, eta=10)
    assert line.startswith("verifying [########################] 1/1 batch sent, 0 confirmed  —/min")


def test_before_any_confirmation_the_eta_assumes_the_default_verification_time():
    clock = FakeClock()
    out = io.StringIO()
    progress = Progress(out, clock=clock)
    progress.phase("sending")
    progress.sending(sent=5, confirmed=0, failed=0, total=5, requests=5, rpm=300, force=True)
    assert f"ETA {duration_text(5 * 0 + 0.2 + DEFAULT_VERIFY_TAIL_SECONDS)}" in out.getvalue()


def test_the_final_planning_line_replaces_the_live_one_on_a_terminal():
    clock = FakeClock()
    term = Terminal()
    progress = Progress(term, clock=clock)
    progress.phase("planning")
    progress.planning(1_000, 10, 100, force=True)
    clock.now += 2
    progress.planned("1,000 rows: 990 to send in 10 batches")
    text = term.getvalue()
    assert text.endswith("\r\x1b[2Kplanned    1,000 rows: 990 to send in 10 batches in 2.0s\n")
    assert "planning" in text.split("\r\x1b[2K")[1]  # the live line was there, and was cleared


def test_warnings_are_summed_up_once_per_interval_without_verbose():
    clock = FakeClock()
    out = io.StringIO()
    progress = Progress(out, clock=clock)
    logger = logging.getLogger("test-progress-summary")
    logger.propagate = False
    logger.addHandler(WarningSummary(progress))
    try:
        for _ in range(3):
            logger.warning("Omnisend %s %s → %s; attempt %d/%d, retrying in %.2f s", "POST", "/api/batches", "429",
                           1, 6, 0.5)
        assert out.getvalue() == ""  # nothing per attempt
        clock.now += 6
        logger.warning("Omnisend POST /api/batches → ConnectionError; attempt 2/6, retrying in 1.00 s")
    finally:
        logger.handlers.clear()
    [line] = out.getvalue().splitlines()
    assert line.startswith("retrying   4 warnings in the last 6.0s: POST /api/batches → 429 ×3, "
                           "POST /api/batches → ConnectionError ×1")


def test_other_warnings_are_grouped_whatever_their_numbers():
    clock = FakeClock()
    out = io.StringIO()
    progress = Progress(out, clock=clock)
    handler = WarningSummary(progress)
    for n in (3, 17):
        record = logging.LogRecord("exporter", logging.WARNING, __file__, 1, "batch %d: %s; trying again in %.0fs",
                                   (n, "Omnisend POST /api/batches failed after 6 attempt(s): 503", 30.0), None)
        handler.emit(record)
    progress.close()
    assert "2 warnings" in out.getvalue()
    assert "batch N: Omnisend POST /api/batches failed after N attempt(s): 503" in out.getvalue()


def test_the_eta_uses_the_rate_of_the_last_minute_when_it_was_below_the_budget():
    clock = FakeClock()
    out = io.StringIO()
    progress = Progress(out, clock=clock)
    progress.phase("sending")
    progress.sending(sent=0, confirmed=0, failed=0, total=200, requests=0, rpm=300)
    clock.now += 60
    # 100 requests in the last minute: 100/min, a third of the budget (a 429 storm slowed the pacer).
    progress.sending(sent=100, confirmed=0, failed=0, total=200, requests=100, rpm=300, force=True)
    last = out.getvalue().splitlines()[-1]
    # 100 batches + 1 poll at 100/min, then the default verification time.
    assert last.endswith(f"ETA {duration_text(101 * 60 / 100 + DEFAULT_VERIFY_TAIL_SECONDS)}")
    assert "100/min (budget 300)" in last


class ClosedPipe(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_closed_progress_stream_does_not_stop_the_work():
    progress = Progress(ClosedPipe())
    progress.note("planning")
    progress.sending(sent=1, confirmed=0, failed=0, total=2, requests=1, rpm=300, force=True)
    progress.close()  # nothing raised: the export goes on without its progress output
