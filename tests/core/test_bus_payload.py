"""cacheme.bus's payloads: what one process announces and every other one reads."""

from __future__ import annotations

import json

import pytest

from cacheme.bus import SENDER, decode, encode


def test_keys_round_trip_in_one_payload() -> None:
    keys = ["cacheme:user:1:v1", "clé:日本:\U0001f389", 'quote"and\\back']
    (payload,) = encode(keys, 64 * 1024)
    assert payload.isascii()
    assert decode(payload) == (SENDER, keys)


def test_announcements_are_split_to_fit_the_bus() -> None:
    keys = [f"cacheme:item:{i}:v1" for i in range(1000)]
    payloads = encode(keys, 500)
    assert len(payloads) > 20
    assert all(len(payload) <= 500 for payload in payloads)
    assert [key for payload in payloads for key in decode(payload)[1] or []] == keys


def test_a_key_too_long_for_any_payload_is_announced_as_every_key() -> None:
    assert [decode(payload) for payload in encode(["short", "x" * 1000], 500)] == [(SENDER, None)]


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[]",
        json.dumps({"v": 2, "keys": []}).encode(),
        json.dumps({"v": 1, "keys": [1]}).encode(),
    ],
)
def test_a_payload_that_is_not_ours_is_refused(payload: bytes) -> None:
    with pytest.raises(ValueError):
        decode(payload)
