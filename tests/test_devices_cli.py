"""izreg device revoke / list-revoked / pulls and izreg dev-certs, through argparse."""

from __future__ import annotations

import argparse
import io
import os

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from izreg import cli, devices_cli
from izreg.auth.devices import fingerprint_sha256, serial_hex
from izreg.auth.devicestore import DeviceStore, PullRecorder
from izreg.auth.store import AuthStore
from izreg.devcerts import cert_pem, make_ca, make_device_cert
from izreg.storage.lmdbenv import open_env

NOW = 1_800_000_000.0
ACCOUNT = "0123456789abcdef0123456789abcdef"


class Run:
    def __init__(self, data_dir: str) -> None:
        self.data_dir = data_dir

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = cli.main(["--data-dir", self.data_dir, *argv], environ={}, now=lambda: NOW, stdout=out, stderr=err)
        return code, out.getvalue(), err.getvalue()


@pytest.fixture
def data_dir(tmp_path):
    path = str(tmp_path / "data")
    open_env(path, 1 << 30).close()  # the server (or izreg account create) made it
    return path


@pytest.fixture
def run(data_dir):
    return Run(data_dir)


def store_of(data_dir: str):
    env = open_env(data_dir, 1 << 30)
    return env, DeviceStore(env)


def test_revoke_serial_fingerprint_and_cert(run, data_dir, tmp_path):
    ca = make_ca(NOW)
    device = make_device_cert(ca, ACCOUNT, "gw-1", NOW).cert
    code, out, err = run("device", "revoke", "--serial", "0A:BC", "--note", "lost")
    assert (code, out, err) == (0, "revoked: serial abc\n", "")
    code, out, _ = run("device", "revoke", "--serial", "abc")
    assert (code, out) == (0, "already revoked: serial abc\n")
    fp = "AB" * 32
    assert run("device", "revoke", "--fingerprint", fp)[0] == 0
    pem = tmp_path / "device.pem"
    pem.write_bytes(cert_pem(device))
    code, out, _ = run("device", "revoke", "--cert", str(pem))
    assert code == 0
    assert out.splitlines() == [f"revoked: serial {serial_hex(device)}",
                                f"revoked: fingerprint {fingerprint_sha256(device)}"]

    env, store = store_of(data_dir)
    try:
        assert store.revocations_for(serial_hex(device), "00" * 32).serials == {serial_hex(device)}
    finally:
        env.close()

    code, out, _ = run("device", "list-revoked")
    lines = out.splitlines()
    assert lines[0].split() == ["KIND", "VALUE", "REVOKED", "NOTE"]
    assert ["serial", "abc", "2027-01-15T08:00:00Z", "lost"] in [line.split() for line in lines]
    assert any(line.split()[:2] == ["fingerprint", "ab" * 32] for line in lines)
    assert len(lines) == 5


def test_revoke_errors(run, tmp_path):
    code, out, err = run("device", "revoke", "--serial", "xyz")
    assert code == 2 and "not a hexadecimal certificate serial" in err and out == ""
    code, _, err = run("device", "revoke", "--fingerprint", "abc")
    assert code == 2 and "SHA-256" in err
    code, _, err = run("device", "revoke", "--cert", str(tmp_path / "missing.pem"))
    assert code == 2 and "cannot read" in err
    code, _, err = run("device", "revoke", "--serial", "ab", "--fingerprint", "ab" * 32)  # mutually exclusive
    assert code == 2  # argparse says why on the process stderr


def test_no_data_dir_is_an_error(tmp_path):
    code, _, err = Run(str(tmp_path / "typo"))("device", "revoke", "--serial", "ab")
    assert code == 2 and "no izreg data" in err
    assert not os.path.exists(tmp_path / "typo")


def test_pulls_table(run, data_dir):
    env, store = store_of(data_dir)
    try:
        account = AuthStore(env).create_account(NOW).account_id
        other = AuthStore(env).create_account(NOW).account_id
        recorder = PullRecorder(store)
        recorder.record(account, "gw-1", f"{account}/app", "sha256:" + "a" * 64, NOW)
        recorder.record(account, "gw-2", f"{account}/db", "sha256:" + "b" * 64, NOW + 61)
        recorder.record(other, "gw-3", f"{other}/app", "sha256:" + "c" * 64, NOW)
        recorder.flush()
    finally:
        env.close()
    code, out, _ = run("device", "pulls", account)
    assert code == 0
    assert [line.split() for line in out.splitlines()] == [
        ["DEVICE", "REPOSITORY", "DIGEST", "PULLED"],
        ["gw-1", f"{account}/app", "sha256:" + "a" * 64, "2027-01-15T08:00:00Z"],
        ["gw-2", f"{account}/db", "sha256:" + "b" * 64, "2027-01-15T08:01:01Z"],
    ]
    for repository in (f"{account}/db", "db"):  # as izreg images takes it: NAME or ACCOUNT_ID/NAME
        code, out, _ = run("device", "pulls", account, "--repository", repository)
        assert code == 0
        assert [line.split()[0] for line in out.splitlines()] == ["DEVICE", "gw-2"]



def test_pulls_none_says_why(run, data_dir):
    # right after a pull with an access key (the tour's skopeo), or before the server's next write of the
    # batch: the empty table alone read as "pull records are broken"
    env, _ = store_of(data_dir)
    try:
        account = AuthStore(env).create_account(NOW).account_id
    finally:
        env.close()
    code, out, err = run("device", "pulls", account)
    assert (code, out) == (0, "DEVICE  REPOSITORY  DIGEST  PULLED\n")
    assert err == ("no device pulls recorded: only pulls with a device certificate count (over TLS, or reported"
                   " by an edge gateway), not pulls with an access key; the server writes them every 5 s"
                   " ([devices] pull_flush_interval)\n")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["nope"], "not an account id"),
        ([ACCOUNT], f"no such account: {ACCOUNT}"),
        ([ACCOUNT, "--repository", "a//b"], "not a repository name (NAME or <account>/<name>): 'a//b'\n"),
        ([ACCOUNT, "--repository", "Bad Name"], "not a repository name (NAME or <account>/<name>): 'Bad Name';"
                                                " repository names are lowercase"),
        # names are lowercase: the name to use
        ([ACCOUNT, "--repository", f"{ACCOUNT}/MyApp"],
         f"not a repository name (NAME or <account>/<name>): '{ACCOUNT}/MyApp'; repository names are lowercase"
         f' (a-z, 0-9 and the separators ".", "_", "-"): use {ACCOUNT}/myapp\n'),
        ([ACCOUNT, "--repository", "MyApp"], f": use {ACCOUNT}/myapp\n"),
        ([ACCOUNT, "--repository", f"{ACCOUNT.upper()}/app"], f": use {ACCOUNT}/app\n"),
        ([ACCOUNT, "--repository", f"{'f' * 32}/app"], f"repository {'f' * 32}/app is not in account {ACCOUNT}"),
    ],
)
def test_pulls_errors(run, argv, message):
    code, out, err = run("device", "pulls", *argv)
    assert (code, out) == (2, "")
    assert message in err and err.count("\n") == 1


def test_dev_certs(run, tmp_path):
    target = str(tmp_path / "certs")
    code, out, err = run("dev-certs", target, "--account", ACCOUNT, "--device-id", "edge-7")
    assert code == 0, err
    assert "--cert-dir" in out and ACCOUNT in out
    with open(os.path.join(target, "client.cert"), "rb") as f:
        assert x509.load_pem_x509_certificate(f.read()).subject.rfc4514_string() == f"CN=edge-7,OU={ACCOUNT}"
    code, _, err = run("dev-certs", target)
    assert code == 2 and "--force" in err
    assert run("dev-certs", target, "--force")[0] == 0
    code, _, err = run("dev-certs", str(tmp_path / "other"), "--account", "XYZ")
    assert code == 2 and "account id" in err


def test_dev_certs_random_account(run, tmp_path):
    """Without --account the account is made up, and the output says so and how to give yours."""
    target = str(tmp_path / "c")
    code, out, _ = run("dev-certs", target)
    assert code == 0
    account = out.split("(account ")[1].split(",")[0]
    assert len(account) == 32 and int(account, 16) >= 0
    assert (f"  account {account} was made up (no --account): no account has it, so the registry refuses this"
            f" device's pulls; for a device of your account: izreg dev-certs {target} --force --account ACCOUNT_ID"
            " (izreg account list shows the ids)\n") in out
    code, out, _ = run("dev-certs", target, "--force", "--account", ACCOUNT)
    assert code == 0 and "made up" not in out
    assert _subject(os.path.join(target, "client.cert")) == f"CN=dev-device,OU={ACCOUNT}"


def _subject(path: str) -> str:
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificate(f.read()).subject.rfc4514_string()


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _issued_by(cert_path: str, ca_path: str) -> bool:
    """Whether the certificate's signature verifies with the CA's key."""
    cert, ca = (x509.load_pem_x509_certificate(_read(p)) for p in (cert_path, ca_path))
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def test_dev_certs_reuses_the_ca_of_its_directory(run, tmp_path):
    """It made a new CA on every run: a server started with the first CA refused the devices of the next."""
    target = str(tmp_path / "certs")
    assert run("dev-certs", target, "--account", ACCOUNT, "--device-id", "gw-1")[0] == 0
    kept = {name: _read(os.path.join(target, name)) for name in ("ca.crt", "server/ca.key", "server/server.crt")}
    code, _, err = run("dev-certs", target, "--account", ACCOUNT, "--device-id", "gw-2")
    assert code == 2 and err == (
        f"izreg: error: {target} already has client.cert, client.key: another device from its CA: izreg dev-certs"
        f" OTHER_DIR --ca {target} --account {ACCOUNT} --device-id ID; --force replaces them (the CA stays)\n")
    code, _, err = run("dev-certs", target, "--device-id", "gw-2")  # no --account given: a placeholder
    assert code == 2 and f"--ca {target} --account ACCOUNT_ID --device-id ID;" in err
    code, out, err = run("dev-certs", target, "--account", ACCOUNT, "--device-id", "gw-2", "--force")
    assert code == 0, err
    assert f"  issued by the CA of {target} ({target}/server/ca.key); kept the server certificate" in out
    assert kept == {name: _read(os.path.join(target, name)) for name in kept}
    assert _subject(os.path.join(target, "client.cert")) == f"CN=gw-2,OU={ACCOUNT}"
    assert _issued_by(os.path.join(target, "client.cert"), os.path.join(target, "ca.crt"))


def test_dev_certs_issues_devices_into_other_directories_from_one_ca(run, tmp_path):
    first, second = str(tmp_path / "certs"), str(tmp_path / "gw-2")
    assert run("dev-certs", first, "--account", ACCOUNT, "--device-id", "gw-1")[0] == 0
    code, out, err = run("dev-certs", second, "--ca", first, "--account", ACCOUNT, "--device-id", "gw-2")
    assert code == 0, err
    assert out.splitlines()[:3] == [
        f"wrote development certificates to {second} (account {ACCOUNT}, device gw-2)",
        f"  issued by the CA of {first} ({first}/server/ca.key)",
        f"  server:  --tls-cert {first}/server/server.crt --tls-key {first}/server/server.key --device-ca"
        f" {first}/ca.crt (a server started so trusts this device already)"]
    # a client cert dir: the CA's certificate and the device's pair; the CA key and the server's files stay
    assert sorted(os.listdir(second)) == ["ca.crt", "client.cert", "client.key"]
    assert _read(os.path.join(second, "ca.crt")) == _read(os.path.join(first, "ca.crt"))
    assert os.stat(os.path.join(second, "client.key")).st_mode & 0o777 == 0o600
    assert _issued_by(os.path.join(second, "client.cert"), os.path.join(first, "ca.crt"))
    assert _subject(os.path.join(second, "client.cert")) == f"CN=gw-2,OU={ACCOUNT}"
    code, _, err = run("dev-certs", second, "--ca", first, "--account", ACCOUNT)
    assert code == 2 and f"--ca {first} --account {ACCOUNT} --device-id ID" in err
    assert run("dev-certs", second, "--ca", first, "--account", ACCOUNT, "--force")[0] == 0


@pytest.mark.parametrize(
    "setup, argv, message",
    [
        (None, ["--ca", "{tmp}/nowhere"], "{tmp}/nowhere does not exist: --ca takes the directory an earlier izreg"
                                         " dev-certs wrote (the one holding ca.crt and server/ca.key)\n"),
        ("empty", ["--ca", "{tmp}/empty"], "{tmp}/empty holds no CA to issue from (no ca.crt and no server/ca.key):"
                                          " give the directory an earlier izreg dev-certs wrote, or a new one"),
        ("half", ["--ca", "{tmp}/half"], "{tmp}/half holds no CA to issue from (no server/ca.key)"),
        ("own", ["--ca", "{tmp}/other"], "{tmp}/out holds a CA of its own (server/ca.key): issue into another"
                                        " directory from {tmp}/other, or leave out --ca to issue from {tmp}/out's"),
    ],
)
def test_dev_certs_ca_errors(run, tmp_path, setup, argv, message):
    tmp = str(tmp_path)
    assert run("dev-certs", f"{tmp}/other", "--account", ACCOUNT)[0] == 0
    if setup == "half":
        assert run("dev-certs", f"{tmp}/half", "--account", ACCOUNT)[0] == 0
        os.remove(f"{tmp}/half/server/ca.key")
    if setup == "empty":
        os.mkdir(f"{tmp}/empty")
    if setup == "own":
        assert run("dev-certs", f"{tmp}/out", "--account", ACCOUNT)[0] == 0
    code, out, err = run("dev-certs", f"{tmp}/out", "--account", ACCOUNT, *[a.format(tmp=tmp) for a in argv])
    assert (code, out) == (2, "") and err.startswith(f"izreg: error: {message.format(tmp=tmp)}"), err


def test_handler_convention_of_izreg_cli(data_dir):
    """The same parsers also set handler(args, context) for izreg.cli's dispatcher."""

    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir")
    devices_cli.add_subparsers(parser.add_subparsers(dest="group", required=True))
    args = parser.parse_args(["device", "revoke", "--serial", "ff"])
    context = cli.Context(data_dir, lambda: NOW, io.StringIO(), io.StringIO())
    assert args.handler(args, context) == 0
    assert context.stdout.getvalue() == "revoked: serial ff\n"


def test_unrevoke_lets_the_device_in_again(run, data_dir, tmp_path):
    ca = make_ca(NOW)
    device = make_device_cert(ca, ACCOUNT, "gw-1", NOW).cert
    pem = tmp_path / "device.pem"
    pem.write_bytes(cert_pem(device))
    assert run("device", "revoke", "--cert", str(pem))[0] == 0
    code, out, err = run("device", "unrevoke", "--serial", serial_hex(device).upper())
    assert (code, out, err) == (0, f"unrevoked: serial {serial_hex(device)}\n", "")
    code, out, _ = run("device", "unrevoke", "--cert", str(pem))
    assert out.splitlines() == [f"was not revoked: serial {serial_hex(device)}",
                                f"unrevoked: fingerprint {fingerprint_sha256(device)}"]
    env, store = store_of(data_dir)
    try:
        revoked = store.revocations_for(serial_hex(device), fingerprint_sha256(device))
        assert not revoked.serials and not revoked.fingerprints
    finally:
        env.close()
    code, _, err = run("device", "unrevoke", "--serial", "xyz")
    assert code == 2 and "izreg: error:" in err


def test_dev_certs_hosts(run, tmp_path):
    target = str(tmp_path / "certs")
    code, out, err = run("dev-certs", target, "--account", ACCOUNT, "--host", "registry.lab.example",
                         "--host", "192.0.2.7")
    assert code == 0, err
    assert ("  the server certificate names registry.lab.example, 192.0.2.7, localhost, 127.0.0.1, containers.local\n"
            in out)
    with open(os.path.join(target, "server", "server.crt"), "rb") as f:
        sans = x509.load_pem_x509_certificate(f.read()).extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value
    assert "registry.lab.example" in sans.get_values_for_type(x509.DNSName)
    code, out, err = run("dev-certs", str(tmp_path / "other"), "--host", "not a name")
    assert (code, out) == (2, "") and "not a host name or IP address: 'not a name'" in err
    code, out, _ = run("dev-certs", str(tmp_path / "plain"))
    assert code == 0 and "(--host NAME for the name clients reach it by)" in out
