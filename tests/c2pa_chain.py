"""A throw-away C2PA signing chain for tests: an ES256 root CA and a leaf that c2pa accepts as a signer.

c2pa requires of the signing certificate: not a CA, the digitalSignature key usage, an extended key usage
from its list (emailProtection here; anyExtendedKeyUsage is refused), and a chain up to a trust anchor
(not self-signed). Readers are told to trust the root through their settings (`reader_context`).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class SigningChain:
    key_pem: str  # the leaf's private key, PKCS#8
    chain_pem: str  # leaf, then root
    root_pem: str

    def write(self, directory: Path) -> tuple[Path, Path]:
        """(key file, chain file) in `directory`, as a mounted Kubernetes Secret would hold them."""
        key, chain = directory / "c2pa-key.pem", directory / "c2pa-chain.pem"
        key.write_text(self.key_pem)
        chain.write_text(self.chain_pem)
        return key, chain


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "klein-edit tests"),
        ]
    )


def _usage(*, signing: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=signing,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=not signing,
        crl_sign=not signing,
        encipher_only=False,
        decipher_only=False,
    )


def make_chain() -> SigningChain:
    now = datetime.datetime.now(datetime.UTC)
    valid = (now - datetime.timedelta(days=1), now + datetime.timedelta(days=7))
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = (
        x509.CertificateBuilder()
        .subject_name(_name("klein-edit test root"))
        .issuer_name(_name("klein-edit test root"))
        .public_key(root_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_usage(signing=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False)
        .sign(root_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name("klein-edit test signer"))
        .issuer_name(root.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(signing=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False
        )
        .sign(root_key, hashes.SHA256())
    )

    def pem(cert: x509.Certificate) -> str:
        return cert.public_bytes(serialization.Encoding.PEM).decode()

    key_pem = leaf_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return SigningChain(key_pem=key_pem, chain_pem=pem(leaf) + pem(root), root_pem=pem(root))


def read_manifest(data: bytes, mime_type: str, trust_root_pem: str) -> tuple[str, dict[str, Any]]:
    """(validation state, active manifest) of `data`, with `trust_root_pem` as the only trust anchor."""
    import io

    import c2pa

    settings = c2pa.Settings.from_dict(
        {"trust": {"trust_anchors": trust_root_pem}, "verify": {"verify_trust": True}}
    )
    reader = c2pa.Reader(mime_type, io.BytesIO(data), None, c2pa.Context(settings))
    state = reader.get_validation_state()
    manifest = reader.get_active_manifest()
    assert manifest is not None, "no active C2PA manifest"
    return str(state), dict(manifest)
