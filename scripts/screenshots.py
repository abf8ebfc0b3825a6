"""`make screenshots`: a PNG of each dashboard page into docs/screenshots/.

Runs a real site (td-backend serve on an embedded PostgreSQL in a temporary directory,
td-gateway run, td-devsim hikvision), does what an operator would (ping, open a door, save a
policy), and photographs each page in Debian's chromium at 1280x800, plus Today on a phone.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pgserver
from playwright.sync_api import Page, expect, sync_playwright

from tests.gateway.e2e import poll
from tests.support.stack import DOOR_PASSWORD, Site, site

OUT = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
REPORTS_FOR_CHARTS_S = 40.0


def shoot(page: Page, name: str) -> None:
    path = OUT / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"wrote {path.relative_to(OUT.parent.parent)}")


@contextlib.contextmanager
def postgres(data_dir: Path) -> Iterator[str]:
    """An embedded PostgreSQL of its own (started before the backend, which then only
    connects: on a busy machine that keeps the backend's start quick)."""
    server = pgserver.get_server(str(data_dir / "pg"), cleanup_mode="stop")
    try:
        server.psql("CREATE DATABASE shots;")
        yield str(server.get_uri("shots"))
    finally:
        server.cleanup()


PEOPLE = (
    # employee_no, name, department, card, badges in at the door now
    ("1001", "Ada Lovelace", "Engineering", "1001001", True),
    ("1002", "Grace Hopper", "Engineering", "1001002", True),
    ("1003", "Linus Pauling", "Lab", "1001003", False),
    ("1004", "Mary Jackson", "Lab", "1001004", False),
)


def add_people(s: Site) -> tuple[dict[str, str], dt.date]:
    """A shift that began two hours ago, four employees with cards; the first two badge in
    at the simulated door now (late), the others are not in."""
    now = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
    start = now - dt.timedelta(hours=2)
    shift = s.admin.post(
        "/v2/shifts",
        json={
            "name": "Office day",
            "start": f"{start:%H:%M}",
            "end": f"{start + dt.timedelta(hours=8):%H:%M}",
            "working_days": list(range(7)),
            "late_grace_s": 300,
        },
    ).json()
    s.admin.patch("/v2/organization", json={"time_zone": "UTC", "default_shift_id": shift["id"]})
    ids = {}
    for number, name, department, card, _ in PEOPLE:
        created = s.admin.post(
            "/v2/employees",
            json={
                "employee_no": number,
                "name": name,
                "department": department,
                "card_nos": [card],
                "agent_uids": [f"pc-{number}"],
            },
        )
        ids[number] = created.json()["id"]
    for number, *_ in PEOPLE:
        poll(
            lambda n=number: s.admin.get(f"/v2/employees/{ids[n]}/terminals").json()["items"][0][
                "enrolled"
            ],
            60,
            "enrolled",
        )
    with httpx.Client(
        base_url=f"http://127.0.0.1:{s.devsim_port}", auth=httpx.DigestAuth("admin", DOOR_PASSWORD)
    ) as door:
        for _, _, _, card, badges in PEOPLE:
            if badges:
                door.post("/simulator/punch", json={"cardNo": card})
    return ids, start.date()


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="td-shots-") as tmp,
        postgres(Path(tmp)) as database_url,
        # Status reports every 2 s instead of 15, so the charts have a line to draw.
        site(Path(tmp), database_url, backend_env={"TD_HEARTBEAT_INTERVAL": "2"}) as s,
    ):
        front = s.add_door("Front door")
        s.add_door("Warehouse", password="an-old-password")
        policy_id = s.add_policy("Office", {"idle_threshold_s": 300, "blocked_apps": ["game.exe"]})
        s.start_gateway()
        started = time.monotonic()
        employee_ids, work_date = add_people(s)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.set_default_timeout(60_000)
            page.goto(f"{s.dashboard}/sign-in")
            shoot(page, "sign-in")
            page.fill("#token", s.backend.admin_token)
            page.click("button[type=submit]")
            expect(page.locator("h1")).to_have_text("Today")

            page.goto(f"{s.dashboard}/doors")
            expect(page.locator('tr[data-door="Front door"] [data-status]')).to_have_text("ONLINE")
            page.click(f"#door-{front}-open_door")
            expect(
                page.locator('#door-commands li[data-command-type="open_door"]').first
            ).to_have_attribute("data-status", "SUCCESS")
            page.click(f"#door-{s.devices['Warehouse']}-open_door")
            expect(
                page.locator('#door-commands li[data-command-type="open_door"]').first
            ).to_have_attribute("data-status", "FAILED")
            expect(page.locator("#events")).to_contain_text("remote open")
            shoot(page, "doors")

            page.goto(f"{s.dashboard}/policies/{policy_id}")
            page.fill("#idle_threshold_s", "120")
            page.fill("#working_hours", "Mon 09:00-17:00\nTue 09:00-17:00")
            page.click("text=Save as a new revision")
            expect(page.locator("#rollout-summary")).to_contain_text("every gateway applied")
            shoot(page, "policy")
            page.fill("#idle_threshold_s", "5")
            page.click("text=Save as a new revision")
            expect(page.locator("#idle_threshold_s-error")).to_be_visible()
            shoot(page, "policy-error")
            page.goto(f"{s.dashboard}/policies/{policy_id}/rollback/1")
            shoot(page, "policy-rollback")
            page.goto(f"{s.dashboard}/policies")
            shoot(page, "policies")

            page.goto(f"{s.dashboard}/fleet/{s.gateway_id}")
            page.click("#gateway-ping")
            expect(
                page.locator('#gateway-commands li[data-command-type="ping"]').first
            ).to_have_attribute("data-status", "SUCCESS")
            # The charts need some reports (one a second here) to draw a line worth seeing.
            time.sleep(max(0.0, REPORTS_FOR_CHARTS_S - (time.monotonic() - started)))
            page.goto(f"{s.dashboard}/fleet/{s.gateway_id}?range=10min")
            shoot(page, "gateway")
            page.goto(f"{s.dashboard}/fleet")
            shoot(page, "fleet")
            page.goto(f"{s.dashboard}/people")
            shoot(page, "people")
            page.goto(f"{s.dashboard}/people/{employee_ids['1001']}")
            shoot(page, "employee")
            page.goto(f"{s.dashboard}/attendance?from={work_date}&to={work_date}")
            expect(page.locator('tr[data-employee="1002"][data-status="late"]')).to_have_count(1)
            shoot(page, "attendance")
            page.goto(f"{s.dashboard}/attendance/flags")
            shoot(page, "flags")
            page.goto(f"{s.dashboard}/")
            expect(page.locator("#today-panels")).to_contain_text("Every gateway is online.")
            expect(page.locator("#people-late")).to_contain_text("Grace Hopper")
            shoot(page, "today")
            phone = browser.new_page(viewport={"width": 390, "height": 844})
            phone.context.add_cookies(page.context.cookies())
            phone.goto(f"{s.dashboard}/")
            shoot(phone, "today-phone")
            browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
