"""entry.py (what an entry carries, its byte header) and refresh.py (the policy's pure decisions)."""

from __future__ import annotations

import math
import random
import struct
from datetime import timedelta
from typing import Any

import pytest

import cacheme
from cacheme import serializer
from cacheme.entry import HEADER_SIZE, Entry, UnknownHeaderError, copy_expiry, pack, unpack
from cacheme.refresh import Policy, Verdict, judge, stale_usable


def test_the_header_format_is_pinned() -> None:
    entry = Entry("ignored", 1_700_000_000.5, 0.25, None)
    raw = pack(entry, 1_700_000_060.5, b"BODY")
    assert HEADER_SIZE == 28
    assert raw == (
        b"\xc1cm\x01"
        + struct.pack("<d", 1_700_000_000.5)
        + struct.pack("<d", 0.25)
        + struct.pack("<d", 1_700_000_060.5)
        + b"BODY"
    )
    assert unpack(raw) == (1_700_000_000.5, 0.25, 1_700_000_060.5, b"BODY")


def test_unknown_fields_and_never_round_trip() -> None:
    raw = pack(Entry(None, None, 0.0, None), None, b"x")
    assert raw[4:12] == struct.pack("<d", math.nan) and raw[20:28] == struct.pack("<d", math.inf)
    assert unpack(raw) == (None, 0.0, None, b"x")


SERIALIZERS = [
    serializer.PickleSerializer(),
    serializer.JSONSerializer(),
    serializer.MsgPackSerializer(),
    serializer.CompressedPickleSerializer(),
    serializer.CompressedJSONSerializer(),
    serializer.CompressedMsgPackSerializer(),
]
VALUES = [0, -1, 127, "text", "\xc1cm\x01", [1, 2], {"a": 1}, None, True, 1.5, ""]


@pytest.mark.parametrize("codec", SERIALIZERS, ids=lambda codec: type(codec).__name__)
def test_no_serializer_writes_bytes_that_start_with_the_magic(codec: Any) -> None:
    # What cacheme 1.0 wrote (the serialized value alone) is read as a body of unknown age.
    for value in VALUES:
        raw = codec.dumps(value)
        assert unpack(raw) == (None, 0.0, None, raw)


@pytest.mark.parametrize("raw", [b"\xc1cm\x02" + bytes(30), b"\xc1cm\x01" + bytes(10), b"\xc1cm"])
def test_a_header_of_another_version_or_cut_short_is_refused(raw: bytes) -> None:
    with pytest.raises(UnknownHeaderError):
        unpack(raw)


@pytest.mark.parametrize(
    ("loaded_at", "expires_at", "ttl", "expected"),
    [
        (100.0, None, 10.0, 110.0),  # a fresh load: the tier's ttl from the load
        (100.0, 105.0, 10.0, 105.0),  # never later than the entry it comes from
        (100.0, 150.0, 10.0, 110.0),  # never later than the tier's ttl counted from the load
        (None, None, 10.0, 130.0),  # unknown age: the tier's full ttl from now (120)
        (None, 125.0, 10.0, 125.0),
        (100.0, 150.0, None, 150.0),  # a tier that never expires keeps the entry's expiry
        (100.0, None, None, None),
    ],
)
def test_copy_expiry(
    loaded_at: float | None, expires_at: float | None, ttl: float | None, expected: float | None
) -> None:
    assert copy_expiry(Entry("v", loaded_at, 1.0, expires_at), ttl, now=120.0) == expected


def policy(**options: Any) -> Policy:
    class Meta:
        refresh_after = options.get("refresh_after")
        early_refresh = options.get("early_refresh")
        stale_if_error = options.get("stale_if_error")

    found = Policy.from_meta(Meta, "Node")
    assert found is not None
    return found


def never() -> float:
    return 0.0  # uniform() = 0: ln(1 - 0) = 0, XFetch never fires before the expiry


@pytest.mark.parametrize(
    ("options", "entry", "now", "verdict"),
    [
        ({"refresh_after": timedelta(seconds=8)}, Entry("v", 100.0, 1.0, 110.0), 107.9, Verdict.FRESH),
        ({"refresh_after": timedelta(seconds=8)}, Entry("v", 100.0, 1.0, 110.0), 108.0, Verdict.RENEW),
        ({"refresh_after": timedelta(seconds=8)}, Entry("v", 100.0, 1.0, 110.0), 110.0, Verdict.EXPIRED),
        ({"refresh_after": timedelta(seconds=8)}, Entry("v", None, 0.0, None), 0.0, Verdict.RENEW),
        ({"refresh_after": timedelta(seconds=8)}, Entry("v", 100.0, 1.0, None), 107.0, Verdict.FRESH),
        ({"early_refresh": 1.0}, Entry("v", 100.0, 1.0, 110.0), 109.0, Verdict.FRESH),
        ({"early_refresh": 1.0}, Entry("v", None, 0.0, None), 109.0, Verdict.FRESH),
        ({"stale_if_error": timedelta(seconds=5)}, Entry("v", 100.0, 1.0, 110.0), 109.0, Verdict.FRESH),
        ({"stale_if_error": timedelta(seconds=5)}, Entry("v", 100.0, 1.0, 110.0), 112.0, Verdict.EXPIRED),
    ],
)
def test_judge(options: dict[str, Any], entry: Entry, now: float, verdict: Verdict) -> None:
    assert judge(policy(**options), entry, now, never) is verdict


def test_xfetch_fires_by_its_formula() -> None:
    # 2 s before the expiry, load time 1 s, beta 2: renew when -ln(1 - u) >= 1, u >= 1 - 1/e.
    xfetch = policy(early_refresh=2.0)
    entry = Entry("v", 100.0, 1.0, 110.0)
    threshold = 1 - math.exp(-1)
    assert judge(xfetch, entry, 108.0, lambda: threshold + 1e-9) is Verdict.RENEW
    assert judge(xfetch, entry, 108.0, lambda: threshold - 1e-9) is Verdict.FRESH


@pytest.mark.parametrize(
    ("gap", "load_time", "beta"), [(1.0, 1.0, 1.0), (3.0, 1.0, 1.0), (1.0, 0.5, 4.0), (10, 1, 1)]
)
def test_xfetch_rate_over_many_hits_is_exp_of_minus_gap_over_load_time_beta(
    gap: float, load_time: float, beta: float
) -> None:
    xfetch = policy(early_refresh=beta)
    entry = Entry("v", 0.0, load_time, 1000.0)
    draws = random.Random(1234).random
    hits = 40_000
    renewed = sum(judge(xfetch, entry, 1000.0 - gap, draws) is Verdict.RENEW for _ in range(hits))
    expected = math.exp(-gap / (load_time * beta))
    assert renewed / hits == pytest.approx(
        expected, abs=4 * math.sqrt(expected * (1 - expected) / hits) + 1e-4
    )


def test_stale_usable() -> None:
    entry = Entry("v", 100.0, 1.0, 110.0)
    assert stale_usable(entry, 109.0, None)
    assert not stale_usable(entry, 110.0, None)
    assert stale_usable(entry, 114.9, 5.0)
    assert not stale_usable(entry, 115.0, 5.0)
    assert stale_usable(Entry("v", 100.0, 1.0, None), 1e12, None)


def test_no_option_no_policy() -> None:
    class Meta:
        refresh_after = None
        early_refresh = None
        stale_if_error = None

    assert Policy.from_meta(Meta, "Node") is None


@pytest.mark.parametrize(
    ("attribute", "value", "message"),
    [
        ("refresh_after", 5, "refresh_after must be a positive timedelta"),
        ("refresh_after", timedelta(0), "refresh_after must be a positive timedelta"),
        ("stale_if_error", timedelta(seconds=-1), "stale_if_error must be a positive timedelta"),
        ("early_refresh", 0, "early_refresh must be a positive number"),
        ("early_refresh", True, "early_refresh must be a positive number"),
        ("early_refresh", math.inf, "early_refresh must be a positive number"),
        ("early_refresh", "1", "early_refresh must be a positive number"),
        ("refresh_afer", timedelta(seconds=1), "did you mean 'refresh_after'"),
    ],
)
def test_a_bad_option_fails_the_class_definition(attribute: str, value: object, message: str) -> None:
    with pytest.raises(cacheme.NodeDefinitionError, match=message):
        type(
            "Bad",
            (cacheme.Node,),
            {
                "Meta": type("Meta", (), {attribute: value, "caches": [cacheme.Cache("local", None)]}),
                "key": lambda self: "k",
                "__annotations__": {},
            },
        )
