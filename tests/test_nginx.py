"""deploy/nginx.conf in front of a real server: TLS, bodies, and nginx's own refusals in the API's error body.

Runs only where nginx and openssl are installed (Debian: apt-get install nginx-light).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from ranker.harness import Server, free_port

pytestmark = pytest.mark.skipif(
    shutil.which("nginx") is None or shutil.which("openssl") is None, reason="nginx or openssl is not installed"
)

CONF = Path(__file__).parent.parent / "deploy" / "nginx.conf"
RANK = "/personalizer/v1.0/rank"
BODY = {"contextFeatures": [{"plan": "pro"}], "actions": [{"id": "a", "features": [{"x": 1}]}, {"id": "b"}]}


class Proxy:
    """nginx with deploy/nginx.conf, on a free port, in front of ``server``, with a self-signed certificate."""

    def __init__(self, folder: Path, server: Server):
        self.folder = folder
        self.cert = folder / "cert.pem"
        key = folder / "key.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(self.cert)],
            check=True, capture_output=True,
        )  # fmt: skip
        self.port = free_port()
        site = CONF.read_text()
        site = site.replace("server 127.0.0.1:8080;", f"server 127.0.0.1:{server.port};")
        site = site.replace("listen 443 ssl;", f"listen 127.0.0.1:{self.port} ssl;").replace("listen [::]:443 ssl;", "")
        site = site.replace("/etc/ssl/certs/ranker.pem", str(self.cert))
        site = site.replace("/etc/ssl/private/ranker.key", str(key))
        (folder / "site.conf").write_text(site)
        user = "user root;" if os.geteuid() == 0 else ""  # temporary files live in this test's folder
        (folder / "nginx.conf").write_text(
            f"{user} daemon off; pid {folder}/nginx.pid; error_log {folder}/error.log;\n"
            "events {}\n"
            f"http {{ access_log off; client_body_temp_path {folder}/body; proxy_temp_path {folder}/proxy;\n"
            f"include {folder}/site.conf; }}\n"
        )
        self.process = subprocess.Popen(["nginx", "-p", str(folder), "-c", str(folder / "nginx.conf")])
        self.url = f"https://127.0.0.1:{self.port}"
        self.upstream = server.url
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                requests.get(self.url + "/healthz", verify=self.cert, timeout=1)
                return
            except requests.ConnectionError:
                time.sleep(0.1)
        raise RuntimeError((folder / "error.log").read_text())

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture(scope="module")
def proxy(tmp_path_factory) -> Iterator[Proxy]:
    # one trusted proxy: the review pages believe nginx's X-Forwarded-Proto
    server = Server(tmp_path_factory.mktemp("upstream"), "[review]\nproxy_hops = 1\n")
    proxy = Proxy(tmp_path_factory.mktemp("nginx"), server)
    yield proxy
    proxy.stop()
    server.stop()


def assert_error(response: requests.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-ms-error-code"] == code
    assert response.json()["error"]["code"] == code


def test_rank_over_tls_keeps_its_connection(proxy):
    with requests.Session() as session:
        answers = [session.post(proxy.url + RANK, json=BODY, verify=proxy.cert, timeout=5) for _ in range(3)]
    assert [a.status_code for a in answers] == [201, 201, 201]
    assert answers[0].json()["rewardActionId"] in ("a", "b")


def test_a_chunked_rank_is_passed_on(proxy):
    data = json.dumps(BODY).encode()
    pieces = (data[i : i + 7] for i in range(0, len(data), 7))
    response = requests.post(
        proxy.url + RANK, data=pieces, headers={"Content-Type": "application/json"}, verify=proxy.cert, timeout=5
    )
    assert response.status_code == 201


def test_the_servers_own_errors_pass_through(proxy):
    response = requests.post(proxy.url + RANK, data=b"{", verify=proxy.cert, timeout=5)
    assert_error(response, 415, "UnsupportedMediaType")


def test_a_body_over_the_limit_gets_the_error_body_from_nginx(proxy):
    data = b'{"pad": "' + b"x" * (2 << 20) + b'"}'
    response = requests.post(
        proxy.url + RANK, data=data, headers={"Content-Type": "application/json"}, verify=proxy.cert, timeout=5
    )
    assert_error(response, 413, "PayloadSizeExceeded")


def test_headers_over_the_limit_get_the_error_body_from_nginx(proxy):
    response = requests.get(proxy.url + "/healthz", headers={"X-Big": "a" * 20000}, verify=proxy.cert, timeout=5)
    assert_error(response, 400, "BadRequest")


def _sign_in(session: requests.Session, url: str, **options) -> requests.Response:
    form = session.get(url + "/review/sign-in", timeout=5, **options)
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', form.text).group(1)
    return session.post(
        url + "/review/sign-in", data={"csrf": csrf, "key": "any"}, allow_redirects=False, timeout=5, **options
    )


def test_the_review_session_cookie_is_secure_behind_tls(proxy):
    """Through nginx (TLS, X-Forwarded-Proto) the review pages' cookies are Secure; straight to the server over
    plain HTTP they are not."""
    with requests.Session() as session:
        answer = _sign_in(session, proxy.url, verify=proxy.cert)
        assert answer.status_code == 303
        cookie = next(c for c in answer.cookies if c.name == "ranker_review_session")
        assert cookie.secure and cookie.has_nonstandard_attr("HttpOnly")
        assert session.get(proxy.url + "/review/loops", verify=proxy.cert, timeout=5).status_code == 200
    with requests.Session() as session:
        answer = _sign_in(session, proxy.upstream)
        assert answer.status_code == 303
        assert not next(c for c in answer.cookies if c.name == "ranker_review_session").secure
