"""`td-backend create-org --owner-email`: the first owner, whose password never is a flag,
signs in to a real `td-backend serve`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.support.backend import TD_BACKEND, running_backend

pytestmark = pytest.mark.slow

PASSWORD = "first owner's password"


def create_org(
    env: dict[str, str], *args: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TD_BACKEND, "create-org", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_create_org_makes_the_first_owner_who_signs_in(tmp_path: Path, database_url: str) -> None:
    with running_backend(tmp_path, database_url) as backend:
        secret = tmp_path / "owner-password"
        secret.write_text(PASSWORD + "\n")
        secret.chmod(0o600)
        env = {**backend.env, "TD_OWNER_PASSWORD_FILE": str(secret)}
        done = create_org(env, "acme", "--owner-email", "Ada@Acme.test", "--owner-name", "Ada")
        assert done.returncode == 0, done.stderr
        created = json.loads(done.stdout)
        assert set(created) == {"org_id", "admin_token", "owner_id"}
        assert PASSWORD not in done.stdout + done.stderr

        # From stdin when nothing is in the environment (a pipe, not a terminal).
        piped = create_org(backend.env, "beta", "--owner-email", "bo@beta.test", stdin=PASSWORD)
        assert piped.returncode == 0, piped.stderr

        with httpx.Client(base_url=backend.url, follow_redirects=False) as browser:
            signed_in = browser.post(
                "/dashboard/sign-in", data={"email": "ada@acme.test", "password": PASSWORD}
            )
            assert signed_in.status_code == 303, signed_in.text
            landing = browser.get("/dashboard/")
            assert landing.status_code == 200 and "Ada@Acme.test" in landing.text
            assert "owner" in landing.text
        admin = {"Authorization": f"Bearer {created['admin_token']}"}
        users = httpx.get(f"{backend.url}/v2/users", headers=admin).json()["items"]
        assert [(u["id"], u["role"]) for u in users] == [(created["owner_id"], "owner")]
        events = httpx.get(f"{backend.url}/v2/audit", headers=admin).json()["items"]
        assert [(e["action"], e["actor"]["kind"]) for e in events] == [("user.create", "cli")]


def test_create_org_refuses_a_missing_or_weak_password_and_a_password_flag(
    tmp_path: Path, database_url: str
) -> None:
    env = {"PATH": str(Path(TD_BACKEND).parent), "TD_DATABASE_URL": database_url}
    missing = create_org(env, "acme", "--owner-email", "ada@acme.test")
    assert missing.returncode == 2 and "TD_OWNER_PASSWORD" in missing.stderr
    weak = create_org({**env, "TD_OWNER_PASSWORD": "short"}, "acme", "--owner-email", "a@b.test")
    assert weak.returncode == 2 and "password:" in weak.stderr
    bad_email = create_org({**env, "TD_OWNER_PASSWORD": PASSWORD}, "acme", "--owner-email", "x")
    assert bad_email.returncode == 2 and "email:" in bad_email.stderr
    flag = create_org(env, "acme", "--owner-email", "a@b.test", "--owner-password", PASSWORD)
    assert flag.returncode == 2
