"""poolgrad.protocol.problems: the catalogue holds every row of the contract's error table."""

from __future__ import annotations

from poolgrad import protocol


def test_problem_catalogue_covers_the_contract() -> None:
    expected = {
        "malformed_tensor": 400,
        "unauthorized": 401,
        "session_not_found": 404,
        "no_forward": 409,
        "stale_step": 412,
        "payload_too_large": 413,
        "unsupported_media_type": 415,
        "not_acceptable": 406,
        "invalid_spec": 422,
        "invalid_tensor": 422,
        "shape_mismatch": 422,
        "capacity_exceeded": 429,
        "store_unavailable": 503,
    }
    assert {code: protocol.PROBLEMS[code].status for code in expected} == expected
