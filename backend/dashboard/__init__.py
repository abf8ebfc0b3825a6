"""The operator's screen at /dashboard: pages rendered on the server, HTMX for the live parts.

web.py          the router: sign-in / sign-out, error pages, static files, templates
session.py      the encrypted session cookie, CSRF checks, the signed-in operator
pages.py        rendering helpers and org-owned row lookups every page uses
reads.py        the queries pages show, each scoped to the operator's organisation
charts.py       inline SVG line charts of a gateway's status reports
commands.py     commands started from a button, followed to their terminal state
today.py        the landing page: what needs attention now
fleet.py        gateways; one gateway's charts, agents, commands
doors.py        terminals, open / close / reboot, access events in words
policies.py     a policy as a form, its rollout, rollback with a diff
policy_form.py  form fields <-> protocol.agent.PolicyBody, errors at the field
templates/      Jinja templates (a leading underscore: a fragment HTMX swaps in)
static/         the stylesheet and the vendored htmx (no CDN: sites run offline)
"""

from backend.dashboard.web import dashboard_router, template_config

__all__ = ["dashboard_router", "template_config"]
