"""Making keys and tokens: ``canvas-sync keygen`` and ``canvas-sync token``, the dev server's
demo tokens, the tests and the load tests. Production tokens come from your own issuer;
these are for development, tests, and a team that wants to sign its own.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

DEFAULT_AUDIENCE = "canvas-sync"
_TTL = re.compile(r"^(\d+)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> int:
    """``90``, ``90s``, ``15m``, ``1h``, ``7d`` in seconds."""
    match = _TTL.match(text.strip())
    if not match or int(match.group(1)) <= 0:
        raise ValueError(f"a lifetime like 90s, 15m, 1h or 7d, not {text!r}")
    return int(match.group(1)) * _UNITS[match.group(2)]


def parse_grant(text: str) -> tuple[str, str]:
    """``project=editor`` (or ``team-1:*=viewer``, ``*=owner``)."""
    project, _, role = text.rpartition("=")
    if not project or role not in ("owner", "editor", "viewer"):
        raise ValueError(f"a grant is PROJECT=owner, PROJECT=editor or PROJECT=viewer, not {text!r}")
    return project, role


def generate_keys(directory: Path) -> tuple[Path, Path]:
    """An ES256 key pair: ``private.pem`` (readable by its owner only) and ``jwks.json``."""
    directory.mkdir(parents=True, exist_ok=True)
    private = ec.generate_private_key(ec.SECP256R1())
    kid = uuid.uuid4().hex[:16]
    jwk = json.loads(ECAlgorithm.to_jwk(private.public_key()))
    jwk.update({"kid": kid, "use": "sig", "alg": "ES256"})
    private_path, jwks_path = directory / "private.pem", directory / "jwks.json"
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    private_path.touch(mode=0o600)
    private_path.write_bytes(pem)
    (directory / "kid").write_text(kid + "\n")
    jwks_path.write_text(json.dumps({"keys": [jwk]}, indent=2) + "\n")
    return private_path, jwks_path


def mint(
    sub: str,
    projects: dict[str, str],
    ttl: int = 3600,
    private_key: Path | None = None,
    secret: bytes | None = None,
    audience: str = DEFAULT_AUDIENCE,
    issuer: str | None = None,
    **claims: Any,
) -> str:
    """A signed token: ES256 with ``private_key`` (its ``kid`` read beside it), or HS256."""
    now = int(time.time())
    payload: dict[str, Any] = {
        "sub": sub,
        "aud": audience,
        "iat": now,
        "exp": now + ttl,
        "projects": projects,
        **claims,
    }
    if issuer:
        payload["iss"] = issuer
    if secret is not None:
        return jwt.encode(payload, secret, algorithm="HS256")
    if private_key is None:
        raise ValueError("a private key or a secret")
    kid_file = private_key.with_name("kid")
    headers = {"kid": kid_file.read_text().strip()} if kid_file.exists() else None
    return jwt.encode(payload, private_key.read_bytes(), algorithm="ES256", headers=headers)
