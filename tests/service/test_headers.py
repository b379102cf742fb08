"""Security headers: every response says `nosniff` and refuses framing; the web pages carry a
content policy allowing scripts only from the server's own files; `/docs` (Swagger, a CDN
script started inline) and the JSON API carry none."""

from __future__ import annotations

from slurmrunner.service.headers import WEB_POLICY
from tests.service.conftest import TestClient


def test_web_pages_carry_the_content_policy(client: TestClient) -> None:
    for path in ("/web/login", "/web/static/live.js", "/web/runs"):
        response = client.get(path, follow_redirects=False)
        assert response.headers["content-security-policy"] == WEB_POLICY, path
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
    assert "script-src 'self';" in WEB_POLICY and "unsafe-eval" not in WEB_POLICY
    assert "frame-ancestors 'none'" in WEB_POLICY


def test_the_api_and_docs_have_no_content_policy_but_nosniff(client: TestClient) -> None:
    for path in ("/healthz", "/docs", "/api/v1/me", "/api/v1/nothing-here"):
        response = client.get(path)
        assert "content-security-policy" not in response.headers, path
        assert response.headers["x-content-type-options"] == "nosniff", path
        assert response.headers["referrer-policy"] == "no-referrer", path


def test_a_too_large_body_is_refused_with_the_headers_too(client: TestClient) -> None:
    response = client.post("/web/login", content=b"x" * (1 << 20))
    assert response.status_code == 413
    assert response.headers["x-frame-options"] == "DENY"


def test_a_server_error_carries_the_headers_too(app) -> None:
    """Starlette answers an unhandled error from outside every middleware (app.py's handler)."""

    @app.get("/web/boom")
    def boom() -> None:
        raise RuntimeError("a bug")

    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/web/boom")
    assert response.status_code == 500 and response.text == "Internal Server Error"
    assert response.headers["content-security-policy"] == WEB_POLICY
    assert response.headers["x-content-type-options"] == "nosniff"
