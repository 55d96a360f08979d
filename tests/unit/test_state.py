"""The per-export membership state: compact, exact round trip, and the fast keys planning uses agree with it."""

from __future__ import annotations

import struct
import zlib
from hashlib import blake2b

import pytest

from shared import hashing
from shared.contacts import email_key, fingerprint
from shared.pipeline import _key_of
from shared.state import MemberState, StateCorrupt, decode_state, encode_members, encode_state


def test_round_trip_keeps_every_email_and_fingerprint():
    entries = [(f"user.{i}@example.com", i * 7919) for i in range(1000)]
    state = decode_state(encode_state(entries), "test")
    assert sorted(zip(state.emails, state.fingerprints, strict=True)) == sorted(entries)


def test_lookup_by_email_key_finds_the_fingerprint():
    state = decode_state(encode_state([("a@example.com", 11), ("b@example.com", 22)]), "test")
    assert state.fingerprint_of(email_key("b@example.com")) == 22
    assert state.fingerprint_of(email_key("c@example.com")) is None


def test_an_empty_state_round_trips():
    state = decode_state(encode_state([]), "test")
    assert len(state) == 0 and state.fingerprint_of(1) is None


def test_length_survives_dropping_the_emails():
    state = decode_state(encode_state([("a@example.com", 1)]), "test")
    state.drop_emails()
    assert len(state) == 1 and state.fingerprint_of(email_key("a@example.com")) == 1


def test_a_corrupt_state_says_how_to_rebuild_it():
    with pytest.raises(StateCorrupt, match="--full-resync"):
        decode_state(b"CIOSTATE1\nnot zlib", "members.bin")


def test_planning_keys_match_the_state_keys():
    assert _key_of("anna@example.com") == email_key("anna@example.com")
    assert MemberState.empty().fingerprint_of(_key_of("x@example.com")) is None
    body = b'{"a":1}'
    assert fingerprint(body) == hashing.fingerprint(body)  # what planning calls
    # States of format versions 1 and 2 hold blake2b fingerprints: planning compares those with the legacy hash.
    assert hashing.legacy_fingerprint(body) == int.from_bytes(blake2b(body, digest_size=8).digest(), "big")


def test_a_state_from_the_old_location_is_read_then_moved_on_save(tmp_path):
    from shared import names
    from shared.state import load_state, save_state, state_name
    from shared.storage import LocalObjectStore

    store = LocalObjectStore(tmp_path)
    store.write(names.RUNS_CONTAINER, "vip/state/members.bin", encode_state([("a@example.com", 7)]))

    assert load_state(store, "vip").fingerprints.tolist() == [7]
    save_state(store, "vip", [("a@example.com", 8)])

    assert not store.exists(names.RUNS_CONTAINER, "vip/state/members.bin")
    assert store.exists(names.STATE_CONTAINER, state_name("vip"))
    assert load_state(store, "vip").fingerprints.tolist() == [8]


def test_the_state_records_the_snapshot_it_describes():
    from shared.state import StateMeta

    meta = StateMeta(snapshot="VipCustomers/2026/11/28/0205", run_id="r-abc", started_at=1_700_000_000.5)
    state = decode_state(encode_state([("a@example.com", 1)], meta), "test")
    assert state.meta == meta and state.fingerprints.tolist() == [1]


def test_a_version_1_state_file_still_loads_with_no_snapshot_recorded():
    import struct
    import zlib

    body = struct.pack("<I", 1) + struct.pack("<Q", 5) + b"old@example.com"
    state = decode_state(b"CIOSTATE1\n" + zlib.compress(body), "members.bin")
    assert state.emails == ["old@example.com"] and state.fingerprints.tolist() == [5]
    assert state.meta.snapshot == "" and not state.meta.is_newer_than("any", 0.0)


def test_a_state_committed_by_a_later_run_of_another_snapshot_is_newer():
    from shared.state import StateMeta

    committed = StateMeta(snapshot="B", run_id="r-b", started_at=200.0)
    assert committed.is_newer_than("A", started_at=100.0)
    assert not committed.is_newer_than("B", started_at=100.0)  # same snapshot: a forced re-run may replace it
    assert not committed.is_newer_than("C", started_at=300.0)  # a run started later describes a newer snapshot


def test_the_metadata_is_read_without_the_members(tmp_path):
    from shared.state import StateMeta, load_state_meta, save_state
    from shared.storage import LocalObjectStore

    store = LocalObjectStore(tmp_path)
    assert load_state_meta(store, "vip") == StateMeta()
    save_state(store, "vip", [("a@example.com", 1)], StateMeta("B", "r-b", 2.0))
    assert load_state_meta(store, "vip") == StateMeta("B", "r-b", 2.0)


# --- format version 3: sorted keys, raw-record hashes, legacy fingerprints -------------------------------------------


def test_round_trip_keeps_the_raw_record_hashes_and_dropped_fields():
    entries = [
        ("a@example.com", 1, 111, ()),
        ("b@example.com", 2, 0, ("phone",)),
        ("c@example.com", 3, 333, ("birthdate", "phone")),
        ("d@example.com", 4, 444, ("phone",)),
    ]
    state = decode_state(encode_state(entries), "test")
    assert sorted(state.entries()) == entries


def test_a_state_is_sorted_by_email_key_with_its_columns_aligned():
    entries = [(f"person{i}@example.com", i, i * 7) for i in range(500)]
    state = decode_state(encode_state(entries), "test")
    assert list(state.keys) == sorted(email_key(e) for e, _, _ in entries)
    for email, fp, raw in entries:
        i = state.index_of(email_key(email))
        assert (state.emails[i], state.fingerprints[i], state.raws[i], state.dropped[i]) == (email, fp, raw, 0)


def test_a_current_state_is_not_legacy_and_an_old_one_is():
    current = decode_state(encode_state([("a@example.com", 1)]), "test")
    body = struct.pack("<IQ", 1, 5) + b"old@example.com"
    old = decode_state(b"CIOSTATE2\n" + struct.pack("<I", 2) + b"{}" + zlib.compress(body), "members.bin")
    assert not current.legacy and old.legacy
    assert old.fingerprint_of(email_key("old@example.com")) == 5 and old.raws.tolist() == [0]


def test_a_rewritten_old_state_keeps_saying_its_fingerprints_are_blake2b():
    body = struct.pack("<IQ", 1, 5) + b"old@example.com"
    old = decode_state(b"CIOSTATE1\n" + zlib.compress(body), "members.bin")
    again = decode_state(encode_members(old), "members.bin")
    assert again.legacy and again.entries() == [("old@example.com", 5, 0, ())]


def test_a_million_contacts_fit_in_32_bytes_each_at_the_benchmark_s_address_lengths():
    # 50k sampled addresses of the benchmark generator's shape; keys, fingerprints and raw hashes are random.
    import random

    rnd = random.Random(3)
    names = ["anna", "jonas", "karin", "nils", "ben", "maria", "li", "omar", "eva", "tomas"]
    domains = ["example.com", "mail.example", "example.org", "post.example.net"]
    entries = [
        (f"{rnd.choice(names)}.{rnd.choice(names)}.{i}@{rnd.choice(domains)}", rnd.getrandbits(64), rnd.getrandbits(64))
        for i in range(50_000)
    ]
    assert len(encode_state(entries)) / len(entries) <= 32


def test_a_damaged_current_state_says_how_to_rebuild_it():
    data = encode_state([("a@example.com", 1, 2)])
    with pytest.raises(StateCorrupt, match="full-resync"):
        _ = decode_state(data[:-20], "members.bin").emails
