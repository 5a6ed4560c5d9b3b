"""Signals as KeyboardInterrupt: at once outside a job, at the next safe point inside one."""

from __future__ import annotations

import os
import signal

import pytest

from clipsweep import interrupts


def test_interrupts_raise_at_once_outside_a_job_and_at_the_safe_point_inside_one() -> None:
    before = signal.getsignal(signal.SIGINT)
    restore = interrupts.install()
    try:
        with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
            os.kill(os.getpid(), signal.SIGTERM)  # delivered to this (main) thread at once
        reached = []
        with pytest.raises(KeyboardInterrupt, match="SIGINT"), interrupts.deferred():
            os.kill(os.getpid(), signal.SIGINT)
            reached.append("after the signal")  # not interrupted mid-write
            interrupts.raise_if_requested()
            reached.append("after the safe point")
        assert reached == ["after the signal"]
        with pytest.raises(KeyboardInterrupt, match="SIGINT"), interrupts.deferred():
            os.kill(os.getpid(), signal.SIGINT)  # never reaches a safe point: raised as the job ends
    finally:
        restore()
    assert signal.getsignal(signal.SIGINT) is before
