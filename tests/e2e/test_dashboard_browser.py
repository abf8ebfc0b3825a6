"""The dashboard in Debian's chromium, driven by Playwright, against real processes:
`td-backend serve`, `td-gateway run` and `td-devsim hikvision`.

An operator signs in with the admin token, watches the gateway come ONLINE without reloading,
pings it, opens a door and sees SUCCESS (and a wrongly configured door FAILED, in words),
changes a policy (a bad value is refused at its field) and watches the rollout complete.
HR adds an employee with a card, the card is shown at the simulated door, and they are on
Today's late list and in the month's CSV. Users sign in with email and password: a viewer
sees no door buttons and no form to add people; an operator opens a door, and the audit trail
names them.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.gateway.e2e import poll
from tests.support.stack import DOOR_PASSWORD, Site, site

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
LONG_MS = 60_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: run `bash scripts/system-deps.sh` as root"
            " (apt-get install chromium); Playwright's own browser download does not work here"
        )
    # Real processes on a shared machine: give every expectation a minute, not 5 s.
    expect.set_options(timeout=LONG_MS)
    with sync_playwright() as playwright:
        # CI runs as root, where chromium refuses to start with its sandbox.
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


def sign_in(page: Page, s: Site) -> None:
    page.goto(f"{s.dashboard}/")
    expect(page).to_have_url(f"{s.dashboard}/sign-in")
    page.fill("#token", "tda_not-a-real-token-at-all-0000000")
    page.click("button[type=submit]")
    expect(page.locator("#token-error")).to_contain_text("not valid")
    page.fill("#token", s.backend.admin_token)
    page.keyboard.press("Enter")
    expect(page.locator("h1")).to_have_text("Today")


def test_operator_sees_the_gateway_come_online_opens_a_door_and_rolls_out_a_policy(
    tmp_path: Path, database_url: str, browser: Browser
) -> None:
    with site(tmp_path, database_url) as s:
        front = s.add_door("front door")
        s.add_door("back door", password="not-the-password")
        policy_id = s.add_policy("office", {"idle_threshold_s": 300})
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.set_default_timeout(LONG_MS)
        console: list[str] = []
        page.on("console", lambda message: console.append(message.text))
        sign_in(page, s)

        page.click("nav >> text=Fleet")
        status = page.locator('tr[data-gateway="site"] [data-status]')
        expect(status).to_have_text("OFFLINE")
        s.start_gateway()
        expect(status).to_have_text("ONLINE")  # the table refreshes itself; no reload

        page.click('tr[data-gateway="site"] a')
        expect(page.locator("h1")).to_have_text("site")
        page.click("#gateway-ping")
        ping = page.locator('#gateway-commands li[data-command-type="ping"]').first
        expect(ping).to_have_attribute("data-status", "SUCCESS")
        expect(page.locator("svg.chart polyline, svg.chart circle").first).to_be_attached()

        page.click("nav >> text=Doors")
        expect(page.locator('tr[data-door="front door"] [data-status]')).to_have_text("ONLINE")
        page.click(f"#door-{front}-open_door")
        opened = page.locator('#door-commands li[data-command-type="open_door"]').first
        expect(opened).to_have_attribute("data-status", "SUCCESS")
        expect(page.locator("#events")).to_contain_text("remote open")

        back = s.devices["back door"]
        page.click(f"#door-{back}-open_door")
        failed = page.locator('#door-commands li[data-command-type="open_door"]').first
        expect(failed).to_have_attribute("data-status", "FAILED")
        expect(failed).to_contain_text("authentication failed")

        page.click("nav >> text=Policies")
        page.click("text=office")
        expect(page.locator("#rollout-summary")).to_contain_text("COMPLETE")
        page.fill("#idle_threshold_s", "5")
        page.click("text=Save as a new revision")
        expect(page.locator("#idle_threshold_s-error")).to_have_text("must be at least 10")
        page.fill("#idle_threshold_s", "120")
        page.click("text=Save as a new revision")
        expect(page.locator("[role=status]")).to_contain_text("Saved revision 2")
        expect(page.locator("#rollout-summary")).to_contain_text("every gateway applied revision 2")
        applied = s.admin.get(f"/v2/policies/{policy_id}/status").json()
        assert applied["gateways"][0]["applied_revision"] == 2

        page.click("text=Roll back to 1…")
        expect(page.locator("table")).to_contain_text("Idle after (seconds)")
        page.click("button:has-text('Roll back to revision 1')")
        expect(page.locator("#rollout-summary")).to_contain_text("every gateway applied revision 3")
        assert s.admin.get(f"/v2/policies/{policy_id}").json()["body"]["idle_threshold_s"] == 300

        # The pages keep to their own Content-Security-Policy (htmx without eval, no inline).
        assert not [text for text in console if "Content Security Policy" in text], console

        page.click("text=Sign out")
        expect(page).to_have_url(f"{s.dashboard}/sign-in")
        page.goto(f"{s.dashboard}/fleet")
        expect(page).to_have_url(f"{s.dashboard}/sign-in")


def test_phone_sized_keyboard_only_and_no_layout_shift_while_today_updates(
    tmp_path: Path, database_url: str, browser: Browser
) -> None:
    with site(tmp_path, database_url) as s:
        front = s.add_door("front door")
        s.start_gateway()
        page = browser.new_page(viewport={"width": 390, "height": 844})
        page.set_default_timeout(LONG_MS)
        sign_in(page, s)
        page.evaluate(
            """() => {
                window.shifts = 0;
                new PerformanceObserver((list) => {
                    for (const entry of list.getEntries()) {
                        if (!entry.hadRecentInput) window.shifts += entry.value;
                    }
                }).observe({type: "layout-shift", buffered: false});
                let swaps = 0;
                document.body.addEventListener("htmx:afterSwap", () => {
                    swaps += 1;
                    document.body.dataset.swaps = String(swaps);
                });
            }"""
        )
        expect(page.locator("#today-panels")).to_contain_text("Every gateway is online.")
        # Three refreshes of the panels (read from the DOM: the page's CSP forbids eval).
        expect(page.locator("body")).to_have_attribute(
            "data-swaps", re.compile(r"^([3-9]|\d{2,})$")
        )
        assert page.evaluate("window.shifts") == 0
        for path in (
            "/",
            "/fleet",
            "/doors",
            "/people",
            "/attendance",
            "/policies",
            f"/fleet/{s.gateway_id}",
        ):
            page.goto(f"{s.dashboard}{path}")
            overflow = page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 0, f"{path} scrolls sideways on a phone by {overflow}px"

        # Keyboard only: tab from the top of the Doors page to the door's Open button.
        page.goto(f"{s.dashboard}/doors")
        expect(page.locator('tr[data-door="front door"] [data-status]')).to_have_text("ONLINE")
        target = f"door-{front}-open_door"
        for _ in range(40):
            page.keyboard.press("Tab")
            if page.evaluate("document.activeElement.id") == target:
                break
        else:
            raise AssertionError("the door's Open button is not reachable with Tab")
        page.keyboard.press("Enter")
        opened = page.locator('#door-commands li[data-command-type="open_door"]').first
        expect(opened).to_have_attribute("data-status", "SUCCESS")
        label = page.get_attribute(f"#{target}", "aria-label")
        assert label is not None and re.fullmatch(r"Open front door", label)


def test_hr_adds_an_employee_finds_them_late_on_today_and_downloads_the_month(
    tmp_path: Path, database_url: str, browser: Browser
) -> None:
    with site(tmp_path, database_url) as s:
        s.add_door("front door")
        s.start_gateway()
        # A shift that began two hours ago, so a punch now is late.
        now = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
        start = now - dt.timedelta(hours=2)
        shift = s.admin.post(
            "/v2/shifts",
            json={
                "name": "day",
                "start": f"{start:%H:%M}",
                "end": f"{start + dt.timedelta(hours=8):%H:%M}",
                "working_days": list(range(7)),
                "late_grace_s": 300,
            },
        )
        assert shift.status_code == 201, shift.text
        org = s.admin.patch(
            "/v2/organization", json={"time_zone": "UTC", "default_shift_id": shift.json()["id"]}
        )
        assert org.status_code == 200, org.text

        page = browser.new_page(viewport={"width": 1280, "height": 800}, accept_downloads=True)
        page.set_default_timeout(LONG_MS)
        sign_in(page, s)
        page.click("nav >> text=People")
        page.fill("#employee_no", "1001")
        page.fill("#name", "Ada Lovelace")
        page.fill("#card_nos", "12345")
        page.click("button:has-text('Add')")
        expect(page.locator("[role=status]")).to_contain_text("Saved")
        employee_id = page.url.split("/people/")[1].split("?")[0]

        def enrolled() -> bool:
            items = s.admin.get(f"/v2/employees/{employee_id}/terminals").json()["items"]
            return bool(items) and items[0]["enrolled"]

        poll(enrolled, 60, "the employee enrolled on the terminal")
        with httpx.Client(
            base_url=f"http://127.0.0.1:{s.devsim_port}",
            auth=httpx.DigestAuth("admin", DOOR_PASSWORD),
        ) as door:
            shown = door.post("/simulator/punch", json={"cardNo": "12345"})
        assert shown.status_code == 200, shown.text

        page.click("nav >> text=Today")
        late = page.locator("#people-late")
        expect(late).to_contain_text("Ada Lovelace")  # Today refreshes itself
        expect(page.locator("#people-in")).to_contain_text("Ada Lovelace")

        page.click("nav >> text=Attendance")
        # The month of the shift's day (a shift begun before midnight is that day's work).
        page.fill("input[name=from]", start.date().replace(day=1).isoformat())
        page.fill("input[name=to]", start.date().isoformat())
        page.click("button:has-text('Show')")
        row = page.locator('tr[data-employee="1001"][data-status="late"]')
        expect(row).to_have_count(1)
        with page.expect_download() as download_info:
            page.click("#download-csv")
        download = download_info.value
        assert download.suggested_filename.startswith("attendance-")
        text = Path(download.path()).read_text(encoding="utf-8-sig")
        rows = list(csv.DictReader(io.StringIO(text)))
        late_rows = [r for r in rows if r["employee_no"] == "1001" and r["status"] == "late"]
        assert [r["date"] for r in late_rows] == [start.date().isoformat()]


def sign_in_as_user(page: Page, s: Site, email: str, password: str) -> None:
    page.goto(f"{s.dashboard}/sign-in")
    page.fill("#email", email)
    page.fill("#password", password + "-wrong")
    page.click("button[type=submit]")
    expect(page.locator("#token-error")).to_contain_text("not valid")
    page.fill("#email", email)
    page.fill("#password", password)
    page.keyboard.press("Enter")
    expect(page.locator("h1")).to_have_text("Today")


def test_users_sign_in_with_email_and_password_and_see_only_what_their_role_may_do(
    tmp_path: Path, database_url: str, browser: Browser
) -> None:
    password = "a long enough password"
    with site(tmp_path, database_url) as s:
        front = s.add_door("front door")
        for role in ("viewer", "operator"):
            created = s.admin.post(
                "/v2/users",
                json={
                    "email": f"{role}@site.test",
                    "name": role,
                    "role": role,
                    "password": password,
                },
            )
            assert created.status_code == 201, created.text
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.set_default_timeout(LONG_MS)

        sign_in_as_user(page, s, "viewer@site.test", password)
        expect(page.locator("#signed-in-as")).to_have_text("viewer@site.test · viewer")
        page.click("nav >> text=Doors")
        expect(page.locator('tr[data-door="front door"]')).to_be_visible()
        expect(page.locator(f"#door-{front}-open_door")).to_have_count(0)
        page.click("nav >> text=People")
        expect(page.locator("#add-title")).to_have_count(0)
        page.click("text=Sign out")
        expect(page).to_have_url(f"{s.dashboard}/sign-in")

        sign_in_as_user(page, s, "operator@site.test", password)
        page.click("nav >> text=Doors")
        page.click(f"#door-{front}-open_door")
        expect(page.locator('#door-commands li[data-command-type="open_door"]')).to_have_count(1)
        events = s.admin.get("/v2/audit", params={"action": "device_command.create"}).json()
        assert [(e["actor"]["label"], e["actor"]["role"]) for e in events["items"]] == [
            ("operator@site.test", "operator")
        ]
