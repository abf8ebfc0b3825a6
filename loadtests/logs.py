"""Realistic agent log batches for the load tests: mixed kinds, sizes like real desktops."""

from __future__ import annotations

import datetime as dt
import random
import uuid
from typing import Any

APPS = [
    ("chrome.exe", ["Inbox - Mail", "Quarterly report - Google Docs", "Jira board", "News"]),
    ("EXCEL.EXE", ["Budget 2027.xlsx - Excel", "Timesheet November.xlsx - Excel"]),
    ("WINWORD.EXE", ["Contract draft v3.docx - Word", "Meeting notes.docx - Word"]),
    ("Teams.exe", ["Chat | Microsoft Teams", "Daily stand-up | Microsoft Teams"]),
    ("Code.exe", ["main.py - project - Visual Studio Code"]),
    ("explorer.exe", ["Downloads", "Documents"]),
]
URLS = [
    "https://mail.example.com/inbox",
    "https://docs.example.com/d/1c2b3a/edit",
    "https://jira.example.com/browse/OPS-1234",
    "https://news.example.org/world/2026/11/26/story",
]
SESSION_ACTIONS = ["login", "logout", "lock", "unlock"]


def _ts(now: dt.datetime, offset_s: float) -> str:
    return (now - dt.timedelta(seconds=offset_s)).isoformat()


def make_log(rng: random.Random, now: dt.datetime) -> dict[str, Any]:
    """One log of a random kind; active windows dominate as they do on real desktops."""
    base = {"id": str(uuid.uuid4()), "ts": _ts(now, rng.uniform(0, 60))}
    roll = rng.random()
    if roll < 0.6:
        app, titles = rng.choice(APPS)
        log = {
            **base,
            "kind": "active_window",
            "app": app,
            "title": rng.choice(titles),
            "duration_ms": rng.randint(200, 120_000),
        }
        if app == "chrome.exe":
            log["url"] = rng.choice(URLS)
        return log
    if roll < 0.8:
        return {
            **base,
            "kind": "activity",
            "keys": rng.randint(0, 600),
            "clicks": rng.randint(0, 120),
            "mouse_px": rng.randint(0, 40_000),
            "period_s": 60,
        }
    if roll < 0.95:
        return {**base, "kind": "idle", "duration_ms": rng.randint(60_000, 900_000)}
    return {**base, "kind": "session", "action": rng.choice(SESSION_ACTIONS)}


def make_batch(rng: random.Random, size: int) -> list[dict[str, Any]]:
    now = dt.datetime.now(dt.UTC)
    return [make_log(rng, now) for _ in range(size)]
