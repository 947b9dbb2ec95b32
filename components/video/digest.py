"""HTTP authentication a camera asks for: Basic, and Digest (RFC 2617, RFC 7616).

Digest with MD5 or SHA-256, their ``-sess`` variants, and ``qop=auth`` or no
qop at all (RFC 2069), which is what Axis and most other cameras ask for.
Pure functions, no I/O.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets

from components.video.errors import HttpError


def basic_authorization(user: str, password: str) -> str:
    """The ``Authorization`` value for HTTP Basic (RFC 7617), UTF-8 credentials."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


_AUTH_PARAM = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))\s*,?')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``WWW-Authenticate: Digest realm="x", nonce="y"`` -> ``("digest", {...})``."""
    scheme, _, rest = header.strip().partition(" ")
    params = {}
    for m in _AUTH_PARAM.finditer(rest):
        value = m.group(2) if m.group(2) is not None else m.group(3)
        params[m.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
    return scheme.lower(), params


def digest_authorization(
    challenge: dict[str, str],
    user: str,
    password: str,
    method: str,
    uri: str,
    *,
    cnonce: str | None = None,
    nc: int = 1,
) -> str:
    """The ``Authorization`` value answering an HTTP Digest challenge (RFC 7616).

    Supports MD5 and SHA-256, their ``-sess`` variants, and ``qop=auth`` or
    none (RFC 2069).

    Raises:
        HttpError: the challenge lacks a nonce or asks for an unknown algorithm.
    """
    algorithm = challenge.get("algorithm", "MD5")
    hashes = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}
    base = algorithm.upper().removesuffix("-SESS")
    if base not in hashes or "nonce" not in challenge:
        raise HttpError(f"cannot answer a Digest challenge with algorithm {algorithm!r}")

    def h(text: str) -> str:
        return hashes[base](text.encode()).hexdigest()

    realm, nonce = challenge.get("realm", ""), challenge["nonce"]
    cnonce = cnonce or secrets.token_hex(8)
    ha1 = h(f"{user}:{realm}:{password}")
    if algorithm.upper().endswith("-SESS"):
        ha1 = h(f"{ha1}:{nonce}:{cnonce}")
    ha2 = h(f"{method}:{uri}")
    qops = [q.strip() for q in challenge.get("qop", "").split(",") if q.strip()]
    fields = [
        f'username="{user}"',
        f'realm="{realm}"',
        f'nonce="{nonce}"',
        f'uri="{uri}"',
        f"algorithm={algorithm}",
    ]
    if "auth" in qops:
        response = h(f"{ha1}:{nonce}:{nc:08x}:{cnonce}:auth:{ha2}")
        fields += ["qop=auth", f"nc={nc:08x}", f'cnonce="{cnonce}"']
    else:
        response = h(f"{ha1}:{nonce}:{ha2}")
    fields.append(f'response="{response}"')
    if "opaque" in challenge:
        fields.append(f'opaque="{challenge["opaque"]}"')
    return "Digest " + ", ".join(fields)
