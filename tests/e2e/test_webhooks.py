"""
Webhooks against a real server: a receiver on loopback gets a signed
CloudEvent for a push; with the receiver down, events wait in the index,
survive a registry restart and arrive once it is back. Audit records for
push, delete and key revoke.
"""

from __future__ import annotations

import json
import os
import queue
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from izreg.core import cloudevents
from tests.e2e.test_operations import configured_registry, push_image
from tests.helpers.ociclient import OCIClient, expect
from tests.helpers.server import free_port
from tests.helpers.wait import wait_until

pytestmark = pytest.mark.skipif(os.environ.get("IZREG_E2E_BACKEND", "izreg") != "izreg",
                                reason="izreg's own webhooks")

SECRET = "webhook-secret-0123456789"
WAIT = 60.0


class Receiver:
    """An HTTP server on 127.0.0.1:PORT that queues every POST (headers, body) and answers 204."""

    def __init__(self, port: int) -> None:
        received = self.received = queue.Queue()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.put((dict(self.headers), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{port}/hook"

    def next(self, timeout: float = WAIT) -> tuple[dict, bytes]:
        return self.received.get(timeout=timeout)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def check_signed_event(headers: dict, body: bytes) -> dict:
    assert headers["Content-Type"].startswith("application/cloudevents+json")
    assert cloudevents.verify(SECRET.encode(), body, headers[cloudevents.SIGNATURE_HEADER])
    assert not cloudevents.verify(b"another-secret-0123", body, headers[cloudevents.SIGNATURE_HEADER])
    event = json.loads(body)
    assert event["specversion"] == "1.0" and event["id"] and event["source"].startswith("/izreg/")
    return event


@pytest.fixture
def hook_registry(tmp_path):
    with configured_registry(tmp_path, "[webhooks]\nretry_min = 1\nretry_max = 2\ntimeout = 5\n") as reg:
        yield reg


def deliveries(reg) -> list[dict]:
    return [json.loads(line) for line in reg.cli("webhook", "deliveries", "--json").splitlines()]


def test_a_push_reaches_the_receiver_signed(hook_registry):
    reg = hook_registry
    receiver = Receiver(free_port())
    try:
        hook_id = reg.cli("webhook", "add", reg.account, receiver.url, "--secret", SECRET, "--events", "push,pull")
        assert SECRET not in reg.cli("webhook", "list", "--json")
        client = OCIClient(reg.url, auth=reg.requests_auth)
        repo = f"{reg.account}/hooked/app"
        digest, _ = push_image(client, repo, "v1")
        headers, body = receiver.next()
        event = check_signed_event(headers, body)
        assert event["type"] == "io.izreg.manifest.pushed" and event["subject"] == f"{repo}:v1"
        assert event["data"]["digest"] == digest and event["data"]["repository"] == repo
        assert event["data"]["actor"].startswith("key:")
        expect(client.get_manifest(repo, "v1"), 200)
        headers, body = receiver.next()
        assert check_signed_event(headers, body)["type"] == "io.izreg.manifest.pulled"
        wait_until(lambda: all(d["status"] == "delivered" for d in deliveries(reg)) and len(deliveries(reg)) == 2,
                   "two deliveries recorded as delivered")
        assert SECRET not in reg.log_text()
        reg.cli("webhook", "remove", hook_id)
        assert reg.cli("webhook", "list") .count("\n") == 0  # the header line only
    finally:
        receiver.close()


def test_events_wait_for_the_receiver_across_a_restart(hook_registry):
    reg = hook_registry
    port = free_port()  # nothing listens there yet
    reg.cli("webhook", "add", reg.account, f"http://127.0.0.1:{port}/hook", "--secret", SECRET)
    client = OCIClient(reg.url, auth=reg.requests_auth)
    repo = f"{reg.account}/queued/app"
    push_image(client, repo, "v1", seed=b"1")
    push_image(client, repo, "v2", seed=b"2")
    wait_until(lambda: len(deliveries(reg)) == 2 and all(d["attempts"] >= 1 and d["status"] == "pending"
                                                          for d in deliveries(reg)),
               "both deliveries tried and still pending")
    reg.restart()
    receiver = Receiver(port)
    try:
        subjects = {check_signed_event(*receiver.next())["subject"] for _ in range(2)}
        assert subjects == {f"{repo}:v1", f"{repo}:v2"}
        wait_until(lambda: all(d["status"] == "delivered" for d in deliveries(reg)), "deliveries marked delivered")
    finally:
        receiver.close()


def test_audit_records_push_delete_and_key_revoke(hook_registry):
    reg = hook_registry
    account, creds = reg.new_account()
    client = OCIClient(reg.url, auth=tuple(creds.split(":", 1)))
    repo = f"{account}/audited/app"
    digest, _ = push_image(client, repo, "v1")
    expect(client.request("DELETE", f"/v2/{repo}/manifests/v1"), 202)
    key_id = json.loads(reg.cli("key", "list", account, "--json").splitlines()[0])["id"]
    reg.cli("key", "revoke", key_id)
    records = [json.loads(line) for line in reg.cli("audit", "--account", account, "--json").splitlines()]
    assert [(r["action"], r["target"]) for r in records] == [
        ("account-create", f"account:{account}"),
        ("key-create", f"key:{key_id}"),
        ("push-tag", f"{repo}:v1"),
        ("delete-tag", f"{repo}:v1"),
        ("key-revoke", f"key:{key_id}"),
    ]
    assert records[2]["actor"] == f"key:{key_id}" and records[2]["address"] == "127.0.0.1"
    assert records[2]["detail"] == {"digest": digest}
    assert records[4]["actor"] == "cli"
    assert creds.split(":", 1)[1] not in json.dumps(records)
    assert reg.cli("audit", "--account", account, "--since", "2099-01-01") .count("\n") == 0
