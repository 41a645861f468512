"""
The seed's own commands with the real Docker engine (dockerd + the Debian
docker CLI) and containerd's ``ctr``: login (``-p`` and
``--password-stdin``), build, push, rmi, pull, logout; a wrong key, another
account's key and a read-only key refused with the registry's message;
``ctr images pull --user KEY:<key>`` as a Kubernetes node does; a name
without the account (``docker push HOST/app:v1``) refused at once, with the
form and the caller's account id.
"""

from __future__ import annotations

import secrets
import time

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.docker]


@pytest.fixture
def engine(docker_engine, registry):
    if registry.backend != "izreg":
        pytest.skip("izreg-specific (access keys)")
    yield docker_engine
    docker_engine.docker("logout", registry.host)


def _text(proc):
    """ctr answers bytes, docker text: text for the checks."""
    if isinstance(proc.stdout, bytes):
        proc.stdout, proc.stderr = proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
    return proc


def ok(proc):
    proc = _text(proc)
    assert proc.returncode == 0, f"{proc.args}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def refused(proc, *messages: str):
    proc = _text(proc)
    assert proc.returncode != 0, f"{proc.args} should have failed:\n{proc.stdout}\n{proc.stderr}"
    for message in messages:
        assert message in proc.stdout + proc.stderr, f"{message!r} not in:\n{proc.stdout}\n{proc.stderr}"
    return proc


def build(engine, tmp_path, ref: str) -> str:
    """docker build of a small FROM scratch image; returns the file's content."""
    context = tmp_path / f"ctx-{secrets.token_hex(3)}"
    context.mkdir()
    content = secrets.token_hex(16)
    (context / "hello.txt").write_text(content)
    (context / "Dockerfile").write_text('FROM scratch\nCOPY hello.txt /hello.txt\nCMD ["/hello.txt"]\n')
    ok(engine.docker("build", "-t", ref, str(context)))
    return content


def key_of(creds: str) -> str:
    return creds.partition(":")[2]


def test_login_build_push_rmi_pull_logout(engine, registry, new_repo, tmp_path):
    ref = f"{registry.host}/{new_repo('docker')}:v1"
    login = ok(engine.docker("login", registry.host, "-u", "KEY", "-p", key_of(registry.creds)))
    assert "Login Succeeded" in login.stdout
    build(engine, tmp_path, ref)
    ok(engine.docker("push", ref))
    image_id = ok(engine.docker("image", "inspect", "--format", "{{.Id}}", ref)).stdout.strip()
    ok(engine.docker("rmi", ref))
    refused(engine.docker("image", "inspect", ref))
    ok(engine.docker("pull", ref))
    assert ok(engine.docker("image", "inspect", "--format", "{{.Id}}", ref)).stdout.strip() == image_id
    ok(engine.docker("logout", registry.host))
    ok(engine.docker("rmi", ref))
    refused(engine.docker("pull", ref), "no basic auth credentials")


def test_login_with_password_stdin(engine, registry, new_repo, tmp_path):
    login = ok(engine.docker("login", registry.host, "-u", "KEY", "--password-stdin", input=key_of(registry.creds)))
    assert "Login Succeeded" in login.stdout
    ref = f"{registry.host}/{new_repo('stdin')}:v1"
    build(engine, tmp_path, ref)
    ok(engine.docker("push", ref))


def test_a_wrong_key_is_refused(engine, registry):
    wrong = key_of(registry.creds)[:-4] + ("AAAA" if not key_of(registry.creds).endswith("AAAA") else "BBBB")
    refused(engine.docker("login", registry.host, "-u", "KEY", "-p", wrong), "401")
    refused(engine.docker("login", registry.host, "-u", "admin", "-p", key_of(registry.creds)), "401")


def test_another_accounts_key_is_denied(engine, registry, new_repo, tmp_path):
    ref = f"{registry.host}/{new_repo('theirs')}:v1"
    ok(engine.docker("login", registry.host, "-u", "KEY", "--password-stdin", input=key_of(registry.creds)))
    build(engine, tmp_path, ref)
    ok(engine.docker("push", ref))
    other_account, other = registry.new_account()
    ok(engine.docker("login", registry.host, "-u", "KEY", "--password-stdin", input=key_of(other)))
    # docker prints the message: it names the key's own account, so a mistyped account id is seen
    told = f"access to a repository of another account is denied; your account id is {other_account}"
    refused(engine.docker("push", ref), told)
    ok(engine.docker("rmi", ref))
    refused(engine.docker("pull", ref), told)


def test_a_read_only_key_pulls_but_cannot_push(engine, registry, new_repo, tmp_path):
    account, writer = registry.new_account()
    _, reader = _read_only_key(registry, account)
    ref = f"{registry.host}/{account}/ro/app:v1"
    ok(engine.docker("login", registry.host, "-u", "KEY", "--password-stdin", input=key_of(writer)))
    build(engine, tmp_path, ref)
    ok(engine.docker("push", ref))
    ok(engine.docker("login", registry.host, "-u", "KEY", "--password-stdin", input=key_of(reader)))
    ok(engine.docker("rmi", ref))
    ok(engine.docker("pull", ref))
    build(engine, tmp_path, f"{registry.host}/{account}/ro/app:v2")
    refused(engine.docker("push", f"{registry.host}/{account}/ro/app:v2"), "this access key is read-only")


def _read_only_key(registry, account: str) -> tuple[str, str]:
    key = registry.cli("key", "create", account, "--name", "ro", "--read-only")
    return account, f"KEY:{key}"


def _pulled_by_ctr(engine, registry, tmp_path, ref: str) -> tuple[str, object]:
    """C{ref} built and pushed with docker, then pulled by ctr into a namespace of its own: (namespace, the pull)."""
    ok(engine.docker("login", registry.host, "-u", "KEY", "--password-stdin", input=key_of(registry.creds)))
    build(engine, tmp_path, ref)
    ok(engine.docker("push", ref))
    namespace = "izreg-" + secrets.token_hex(3)
    return namespace, ok(engine.ctr("-n", namespace, "images", "pull", "--plain-http", "--user", registry.creds, ref))


def test_ctr_pulls_with_user_key(engine, registry, new_repo, tmp_path):
    """What a Kubernetes node does: containerd pulls with the key as its credentials."""
    ref = f"{registry.host}/{new_repo('k8s')}:v1"
    namespace, pulled = _pulled_by_ctr(engine, registry, tmp_path, ref)
    assert "done" in pulled.stdout or ref in pulled.stdout
    listed = ok(engine.ctr("-n", namespace, "images", "ls", "-q")).stdout.split()
    assert ref in listed
    refused(engine.ctr("-n", namespace, "images", "pull", "--plain-http", "--user", "KEY:izr_0_bad", ref))


#: what a refusal of a name without the account must take at most (docker retried NAME_INVALID for about 50 s)
FAST = 10.0


def _timed(run):
    started = time.monotonic()
    proc = run()
    return proc, time.monotonic() - started


def test_a_name_without_the_account_is_refused_at_once_with_the_form(engine, registry, tmp_path):
    """
    docker retries a push on every error but a few final ones (UNAUTHORIZED,
    DENIED, UNSUPPORTED, TOOMANYREQUESTS, NAME_UNKNOWN: moby's retryOnError);
    on NAME_INVALID it retried 5 times and said "name invalid" after about
    50 s. A valid name outside the caller's account is DENIED: at once.
    """
    account = registry.account
    ok(engine.docker("login", registry.host, "-u", "KEY", "--password-stdin", input=key_of(registry.creds)))
    name = "app" + secrets.token_hex(3)
    ref = f"{registry.host}/{name}:v1"
    build(engine, tmp_path, ref)
    proc, took = _timed(lambda: engine.docker("push", ref))
    refused(proc, "denied", "<account id>/<name>", f"{account}/{name}")
    assert took < FAST, f"docker push took {took:.1f}s to fail:\n{proc.stdout}\n{proc.stderr}"
    proc, took = _timed(lambda: engine.docker("pull", ref))
    refused(proc, "<account id>/<name>", f"{account}/{name}")
    assert took < FAST, f"docker pull took {took:.1f}s to fail"
    ok(engine.docker("rmi", ref))


def test_ctr_is_refused_at_once_for_a_name_without_the_account(engine, registry, new_repo, tmp_path):
    """containerd prints the status only ("403 Forbidden"), at once; it was "400 Bad Request", at once too."""
    ref = f"{registry.host}/{new_repo('ctr')}:v1"
    namespace, _ = _pulled_by_ctr(engine, registry, tmp_path, ref)
    bare = f"{registry.host}/ctr{secrets.token_hex(3)}:v1"
    ok(engine.ctr("-n", namespace, "images", "tag", ref, bare))
    proc, took = _timed(lambda: engine.ctr("-n", namespace, "images", "push", "--plain-http",
                                           "--user", registry.creds, bare))
    refused(proc, "403")
    assert took < FAST, f"ctr push took {took:.1f}s to fail"
    proc, took = _timed(lambda: engine.ctr("-n", namespace, "images", "pull", "--plain-http",
                                           "--user", registry.creds, bare))
    refused(proc, "403")
    assert took < FAST, f"ctr pull took {took:.1f}s to fail"
