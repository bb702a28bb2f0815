"""Kernel log sources: each yields KernelLine records in the kernel's order, woken by an fd.

A source has: open(resume), fileno(), read_available() -> list[KernelLine], close(), name,
and a `Position` it resumes from. Positions are persisted by the state store only after what
they cover is recorded (see daemon.py).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Resume:
    """Where to start reading: at `position` (inclusive) or just after it."""

    position: object
    inclusive: bool
