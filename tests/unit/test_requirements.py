"""The runtime dependencies are locked: every one, transitive ones included, pinned and hashed; the dev tools too, at
the runtime's versions wherever both need a package (./dev installs both files with --require-hashes)."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
_PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==(\S+)")


def locked(lock: str = "requirements.txt") -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes), from requirements.txt (or another pip-compile lock file)."""
    pins: dict[str, tuple[str, int]] = {}
    current = None
    for line in (REPO / lock).read_text().splitlines():
        match = _PIN.match(line)
        if match:
            current = canonicalize_name(match[1])
            pins[current] = (match[2].rstrip(" \\"), 0)
        elif line.strip().startswith("--hash=sha256:") and current:
            version, hashes = pins[current]
            pins[current] = (version, hashes + 1)
        elif line.strip() and not line.lstrip().startswith("#"):
            raise AssertionError(f"unexpected line in {lock}: {line!r}")
    return pins


def direct(source: str = "requirements.in") -> dict[str, str]:
    out = {}
    for line in (REPO / source).read_text().splitlines():
        if line.strip() and not line.startswith(("#", "-c ")):
            req = Requirement(line)
            out[canonicalize_name(req.name)] = str(req.specifier)
    return out


def test_every_locked_package_is_pinned_with_a_hash():
    pins = locked()
    assert pins
    assert not [name for name, (_, hashes) in pins.items() if hashes == 0]


def test_every_direct_dependency_is_locked_at_its_pin():
    pins = locked()
    for name, spec in direct().items():
        assert name in pins, name
        assert spec == f"=={pins[name][0]}", name


def test_the_lock_includes_every_transitive_dependency():
    """Each locked package's own requirements (for this platform and Python) are locked too."""
    pins = locked()
    missing = []
    for name in pins:
        for text in metadata.requires(name) or ():
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            if canonicalize_name(req.name) not in pins:
                missing.append(f"{name} needs {req.name}")
    assert not missing


def test_every_dev_tool_is_pinned_with_a_hash_at_its_pin():
    pins = locked("requirements-dev.txt")
    assert not [name for name, (_, hashes) in pins.items() if hashes == 0]
    for name, spec in direct("requirements-dev.in").items():
        assert name in pins, name
        assert spec == f"=={pins[name][0]}", name


def test_the_dev_lock_keeps_every_package_it_shares_with_the_runtime_at_the_runtime_pin():
    runtime, dev = locked(), locked("requirements-dev.txt")
    assert {name: dev[name][0] for name in dev.keys() & runtime.keys()} == {
        name: runtime[name][0] for name in dev.keys() & runtime.keys()
    }
