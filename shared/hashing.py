"""The 64-bit hashes planning relies on: email keys, payload fingerprints and raw-record hashes (all xxh3).

Why xxh3 (the ``xxhash`` wheel, 0.5 MB): on the 2-core dev VM it hashes a short record in ~0.15 µs against ~1 µs for
``blake2b(digest_size=8)``, and planning hashes every row two or three times. None of these hashes guards against an
adversary (the data comes from the customer's own Customer Insights export), so a fast non-cryptographic hash is
enough; what matters is the accidental collision budget:

- Email keys: a collision would merge two people (the second becomes a "duplicate"). For n contacts the chance that
  any two of them collide is about n²/2⁶⁵: 1M contacts -> 3·10⁻⁸ per export, ever.
- Payload fingerprints: a changed contact whose new fingerprint equals its old one is not sent: 2⁻⁶⁴ per changed
  contact; 1M changes a day -> one miss in ~5·10¹⁰ years.
- Raw-record hashes (the fast path): a changed row whose hash equals some *other* stored record's hash would be
  taken as unchanged. Each row is compared with all n stored hashes at once (a table lookup), so the chance is
  n/2⁶⁴ per changed row: 1M members and 1M changed rows a day -> 2⁴⁰/2⁶⁴ = 6·10⁻⁸ a day, once in ~45,000 years.
  That is why these stay 64 bits: 48 bits would be once in ~8 months at that volume.

States written before xxh3 (format versions 1 and 2) hold blake2b fingerprints: ``legacy_fingerprint`` computes
those so the first run after the upgrade still recognises unchanged contacts (shared/state.py).
"""

from __future__ import annotations

from hashlib import blake2b

from xxhash import xxh3_64_intdigest

# Seeds keep the three uses apart (an email's key is not the fingerprint of the same bytes).
EMAIL_SEED = 0x6369_6F73_656D_6169  # "ciosemai"
FINGERPRINT_SEED = 0x6369_6F73_6670_7631  # "ciosfpv1"


def key_of_normalised(email: str) -> int:
    """The email key of an already trimmed, lower-cased address."""
    return xxh3_64_intdigest(email.encode(), EMAIL_SEED)


def fingerprint(payload_json: bytes) -> int:
    """64-bit hash of the exact payload bytes sent: equal fingerprints mean nothing changed for that contact."""
    return xxh3_64_intdigest(payload_json, FINGERPRINT_SEED)


def legacy_fingerprint(payload_json: bytes) -> int:
    """The fingerprint states of format versions 1 and 2 hold (unsigned, big-endian blake2b-64)."""
    return int.from_bytes(blake2b(payload_json, digest_size=8).digest(), "big")


# The salted hash of one raw CSV record: raw_hash(record, salt) (see shared/pipeline/rowloop.py for what the salt
# covers). The C function itself, called once per line: a Python wrapper would cost more than the hash.
raw_hash = xxh3_64_intdigest


def salt_of(text: str) -> int:
    """A 64-bit seed from a description of everything a payload depends on besides the record's bytes."""
    return xxh3_64_intdigest(text.encode())
