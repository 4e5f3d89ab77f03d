"""Password hashes for the users of the HTTP record store: scrypt, from the standard library.

Stored as ``scrypt$n$r$p$salt_hex$hash_hex``; verification takes constant time.
"""

import hashlib
import hmac
import os

N, R, P = 2 ** 14, 8, 1


def hash_password(password):
    if not isinstance(password, str) or not password:
        raise ValueError("a password must be a non-empty string")
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=N, r=R, p=P, dklen=32)
    return f"scrypt${N}${R}${P}${salt.hex()}${digest.hex()}"


def verify_password(password, stored):
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        candidate = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p),
                                   dklen=len(digest) // 2)
    except (ValueError, AttributeError):
        return False
    return hmac.compare_digest(candidate.hex(), digest)
