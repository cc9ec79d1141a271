"""Signed bundles: phase 6 signs a bundle folder with OpenSSF model-signing; every loader verifies it.

model-signing hashes every file of the folder into its own manifest and signs that (a Sigstore bundle in
`bundle.sig`). Verification re-hashes the folder, so a file added, removed or changed after signing — even
with `manifest.json` re-hashed to match — fails. Two files stay outside the signature: the signature itself,
and the artifact's completion record, which is written after it.

A signature means something only against a key the verifier already trusts, so the key (or certificate chain,
or Sigstore identity) comes from the config or the command line, never from the bundle itself.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path

from streetvision import io as storage
from streetvision.config.schema import Config, SigningConfig
from streetvision.contracts.errors import BundleError, ConfigError
from streetvision.contracts.validators import SIGNATURE_FILE, UNSIGNED_FILES

log = logging.getLogger(__name__)

PRIVATE_KEY_FILE = "private_key.pem"
PUBLIC_KEY_FILE = "public_key.pem"
UNSIGNED_FIX = (
    "re-export the bundle with a signing identity (signing.* in the config), or pass --allow-unsigned to accept "
    "it with only its manifest's hashes checked (anyone who can write the folder can rewrite those)"
)


def _hashing_config():
    from model_signing import hashing

    # Git paths are not ignored: a bundle is exactly its files, a stray .gitignore included.
    return hashing.Config().set_ignored_paths(paths=list(UNSIGNED_FILES), ignore_git_paths=False)


def _readable(path: str, what: str, where: str) -> Path:
    if not path:
        raise BundleError(f"{what} is not set", where, f"set {what} to a PEM file (README, 'Signed bundles')")
    if not Path(path).is_file():
        raise BundleError(
            f"{what} {path} is not a readable file",
            where,
            "check the path (on a cluster: that the secret or ConfigMap is mounted there)",
        )
    return Path(path)


def sign_bundle(bundle_dir: str | Path, signing: SigningConfig) -> Path | None:
    """Sign every file of `bundle_dir` (written last but for the completion record); None for method none."""
    from model_signing import signing as model_signing

    bundle_dir = Path(bundle_dir)
    where = f"phase6 signing {bundle_dir}"
    config = model_signing.Config().set_hashing_config(_hashing_config())
    if signing.method == "none":
        log.warning("signing.method=none: the bundle is not signed; loaders refuse it without --allow-unsigned")
        return None
    if signing.method == "key":
        config.use_elliptic_key_signer(private_key=_readable(signing.private_key, "signing.private_key", where))
    elif signing.method == "certificate":
        config.use_certificate_signer(
            private_key=_readable(signing.private_key, "signing.private_key", where),
            signing_certificate=_readable(signing.signing_certificate, "signing.signing_certificate", where),
            certificate_chain=[_readable(c, "signing.certificate_chain", where) for c in signing.certificate_chain],
        )
    else:
        config.use_sigstore_signer(use_ambient_credentials=True)
    target = bundle_dir / SIGNATURE_FILE
    try:
        # The folder is hashed before the (temporary) signature file exists, so it never signs itself.
        storage.atomic_write(target, lambda tmp: config.sign(bundle_dir, tmp))
    except (ValueError, TypeError, OSError) as exc:  # a key the library cannot use, e.g. RSA or a wrong password
        raise BundleError(
            f"signing failed: {type(exc).__name__}: {exc}",
            where,
            "use a PEM elliptic-curve private key (P-256, P-384 or P-521) that matches signing.method",
        ) from exc
    return target


def verify_bundle_signature(bundle_dir: str | Path, trust: SigningConfig | None, allow_unsigned: bool = False) -> str:
    """Check `bundle_dir` against its signature and the trusted identity; return what was verified, for logs.

    Refused: an unsigned bundle (unless `allow_unsigned`), a signature by anyone else, and any file added,
    removed or changed since signing. `trust` None or method none verifies nothing, which needs `allow_unsigned`
    as well.
    """
    from model_signing import verifying

    bundle_dir = Path(bundle_dir)
    where = f"bundle {bundle_dir}"
    signature = bundle_dir / SIGNATURE_FILE
    if trust is None or trust.method == "none":
        if allow_unsigned:
            log.warning("signature of %s not checked (allowed unsigned)", bundle_dir)
            return "signature not checked (allowed unsigned)"
        if not signature.is_file():
            raise BundleError(f"the bundle is unsigned (no {SIGNATURE_FILE})", where, UNSIGNED_FIX)
        raise ConfigError(  # a flag (or config key) not given: exit 2, as for other command-line problems
            "no identity to verify the bundle's signature against",
            where,
            "pass --public-key PEM (a local run prints its key; it lies in <run>/kfp/signing/public_key.pem), "
            "--certificate-chain PEM, or --sigstore-identity and --sigstore-issuer",
        )
    if not signature.is_file():
        if allow_unsigned:
            log.warning("%s is unsigned; accepted because unsigned bundles were allowed", bundle_dir)
            return "unsigned (allowed)"
        raise BundleError(f"the bundle is unsigned (no {SIGNATURE_FILE})", where, UNSIGNED_FIX)
    config = verifying.Config().set_hashing_config(_hashing_config())
    if trust.method == "key":
        public_key = _readable(trust.public_key, "the public key (signing.public_key, --public-key)", where)
        config.use_elliptic_key_verifier(public_key=public_key)
        identity = f"key {public_key_fingerprint(public_key)}"
    elif trust.method == "certificate":
        config.use_certificate_verifier(
            certificate_chain=[_readable(c, "signing.certificate_chain", where) for c in trust.certificate_chain]
        )
        identity = "certificate chain " + ", ".join(trust.certificate_chain)
    else:
        if not (trust.sigstore_identity and trust.sigstore_issuer):
            raise BundleError(
                "a Sigstore signature is verified against an identity and its OIDC issuer; one is missing",
                where,
                "set signing.sigstore_identity and signing.sigstore_issuer (--sigstore-identity/--sigstore-issuer)",
            )
        config.use_sigstore_verifier(identity=trust.sigstore_identity, oidc_issuer=trust.sigstore_issuer)
        identity = f"sigstore {trust.sigstore_identity} ({trust.sigstore_issuer})"
    try:
        config.verify(bundle_dir, signature)
    except Exception as exc:  # model-signing raises ValueError, crypto and JSON errors alike for a bad signature
        raise BundleError(
            f"signature check failed ({identity}): {_mismatch(exc)}",
            where,
            "the bundle was changed after signing, or signed by another identity: re-export it with phase6 and "
            "verify with the signer's public key; never edit an exported bundle",
        ) from exc
    return f"signed by {identity}"


def _mismatch(exc: Exception) -> str:
    """model-signing's verification failure, with a file-level mismatch said by file name (its message lists
    raw digests)."""
    text = str(exc)
    # The message holds a list's repr, so a name's quotes may come escaped.
    changed = re.findall(r"Hash mismatch for \\?'([^'\\]+)\\?'", text)
    added = re.findall(r"Extra files found in model '[^']*': ([^\"'\]]+)", text)
    removed = re.findall(r"Missing files in model '[^']*': ([^\"'\]]+)", text)
    parts = [
        f"{what}: {', '.join(names)}"
        for what, names in (("changed since signing", changed), ("added", added), ("removed", removed))
        if names
    ]
    return "; ".join(parts) if parts else f"{type(exc).__name__}: {text}"


def public_key_fingerprint(public_key: str | Path) -> str:
    """sha256 of the public key's DER encoding: what a person compares to pin a key."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_public_key(Path(public_key).read_bytes())
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def generate_key_pair(directory: str | Path, group_readable: bool = False) -> tuple[Path, Path]:
    """A fresh P-256 key pair in `directory` (private_key.pem, owner-only unless `group_readable`; public_key.pem)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = directory / PRIVATE_KEY_FILE, directory / PUBLIC_KEY_FILE
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    mode = 0o640 if group_readable else 0o600
    with storage.naming_disk_full(private, len(pem)):
        fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)  # never readable by others, not even briefly
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
    with storage.naming_disk_full(public):
        public.write_bytes(
            key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
    return private, public


def with_own_signing_key(cfg: Config, directory: str | Path, group_readable: bool = False) -> Config:
    """`cfg`, or (signing.method=key with no private_key) `cfg` signing with the key pair in `directory`, made
    there if it has none: how a local run or a benchmark signs offline with no setup. Its public key is what
    verifies the bundle."""
    if cfg.signing.method != "key" or cfg.signing.private_key:
        return cfg
    directory = Path(directory).resolve()
    private, public = directory / PRIVATE_KEY_FILE, directory / PUBLIC_KEY_FILE
    if not private.is_file():
        private, public = generate_key_pair(directory, group_readable)
    signing = cfg.signing.model_copy(update={"private_key": str(private), "public_key": str(public)})
    return cfg.model_copy(update={"signing": signing})
