"""The fleet CA, enrolment tokens and the broker ACL, on files in a temporary folder."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cloud.errors import EnrolmentRefused, InvalidCsr, PkiError
from cloud.security.broker import device_acl
from cloud.security.enrolment import Enrolments
from cloud.security.pki import FleetCA, verify_issued_by
from common.tls import common_name, csr_pem, load_certificate, new_key


@pytest.fixture
def ca(tmp_path) -> FleetCA:
    return FleetCA.init(tmp_path / "pki", hosts=["127.0.0.1", "hub.example"])


def test_a_device_certificate_names_the_tokens_device_whatever_the_csr_asked(ca):
    cert = ca.sign_device(csr_pem(new_key(), "tandem-hub"), "cam-1")
    assert common_name(cert) == "cam-1"
    verify_issued_by(ca.ca_path.read_bytes(), cert)
    usage = load_certificate(cert).extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]  # a device cannot pose as a server
    assert ca.devices() == ["cam-1"]


def test_the_server_certificate_covers_the_hosts_given(ca):
    cert = load_certificate(ca.server_files().cert_path.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["hub.example"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    with pytest.raises(PkiError, match="exists already"):
        FleetCA.init(ca.folder)


def _rsa_csr(bits: int) -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cam-1")])
    request = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return request.public_bytes(serialization.Encoding.PEM)


def test_bad_requests_are_refused_with_the_reason(ca):
    with pytest.raises(InvalidCsr, match="not a PEM"):
        ca.sign_device(b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", "cam-1")
    with pytest.raises(InvalidCsr, match="too weak"):
        ca.sign_device(_rsa_csr(1024), "cam-1")
    with pytest.raises(PkiError, match="service"):
        ca.sign_device(csr_pem(new_key(), "x"), "tandem-hub")
    with pytest.raises(Exception, match="device id"):
        ca.sign_device(csr_pem(new_key(), "x"), "cam/+")
    assert ca.devices() == []


def test_a_new_certificate_supersedes_the_old_and_revocation_reaches_the_crl(ca):
    first = load_certificate(ca.sign_device(csr_pem(new_key(), "cam-1"), "cam-1"))
    second = load_certificate(ca.sign_device(csr_pem(new_key(), "cam-1"), "cam-1"))
    crl = x509.load_pem_x509_crl(ca.crl_path.read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(first.serial_number) is not None
    assert crl.get_revoked_certificate_by_serial_number(second.serial_number) is None
    assert ca.devices() == ["cam-1"]
    assert ca.revoke("cam-1") == [second.serial_number]
    crl = x509.load_pem_x509_crl(ca.crl_path.read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(second.serial_number) is not None
    assert ca.devices() == []
    with pytest.raises(PkiError, match="no certificate"):
        ca.revoke("cam-1")


def test_expired_certificates_leave_the_acl(ca):
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=10)
    ca.issue_device_for_tests("cam-old", days=1, not_before=past)
    ca.issue_device_for_tests("cam-new")
    assert ca.devices() == ["cam-new"]


def test_the_acl_gives_each_device_its_own_topics_only():
    acl = device_acl(["cam-b", "cam-a"])
    blocks = acl.split("\n\n")[1:]
    assert [block.splitlines()[0] for block in blocks] == ["user cam-a", "user cam-b"]
    for block, device in zip(blocks, ["cam-a", "cam-b"], strict=True):
        rules = block.splitlines()[1:]
        assert all(rule.startswith("topic ") and f"tandem/v1/devices/{device}/" in rule for rule in rules)
        assert f"topic write tandem/v1/devices/{device}/escalations" in rules
        assert f"topic read tandem/v1/devices/{device}/results" in rules
        assert not any("#" in rule or "+" in rule for rule in rules)


def test_enrolment_tokens_work_once_and_expire(tmp_path):
    now = [1000.0]
    tokens = Enrolments(tmp_path, clock=lambda: now[0])
    token = tokens.create("cam-1", ttl_s=60, by="ops")
    assert token not in (tmp_path / "enrolments.json").read_text()  # only its sha256 is kept
    assert tokens.redeem(token, lambda device_id: device_id.encode()) == b"cam-1"
    with pytest.raises(EnrolmentRefused, match="used already"):
        tokens.redeem(token, lambda device_id: b"")
    late = tokens.create("cam-2", ttl_s=60, by="ops")
    now[0] += 61
    with pytest.raises(EnrolmentRefused, match="expired"):
        tokens.redeem(late, lambda device_id: b"")


def test_a_token_is_not_spent_when_signing_fails(tmp_path):
    tokens = Enrolments(tmp_path)
    token = tokens.create("cam-1", ttl_s=60, by="ops")

    def fail(_device_id: str) -> bytes:
        raise InvalidCsr("bad CSR")

    with pytest.raises(InvalidCsr):
        tokens.redeem(token, fail)
    assert tokens.redeem(token, lambda device_id: b"ok") == b"ok"


def test_a_fresh_crl_is_valid_a_week_from_now(ca):
    crl = x509.load_pem_x509_crl(ca.crl_path.read_bytes())
    now = datetime.datetime.now(datetime.timezone.utc)
    assert crl.next_update_utc is not None and crl.next_update_utc - now > datetime.timedelta(days=6)
    assert crl.is_signature_valid(load_certificate(ca.ca_path.read_bytes()).public_key())
