"""Sign-in to the dashboard through the organisation's OpenID Connect provider.

    settings.py   GET/PUT/DELETE /v2/organization/oidc: issuer, client id, sealed secret
    relying.py    the relying party: discovery, authorization URL with PKCE, code exchange,
                  id_token validation against the provider's JWKS
    pages.py      GET /dashboard/oidc/start and /dashboard/oidc/callback

The provider only proves an address: the user must already exist, enabled, in that
organisation (no accounts are made on sign-in). See docs/accounts.md.
"""
