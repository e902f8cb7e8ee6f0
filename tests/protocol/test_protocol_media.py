"""poolgrad.protocol.media: media types and Accept negotiation (RFC 9110 12.5.1)."""

from __future__ import annotations

import pytest

from poolgrad import protocol
from poolgrad.protocol import NotAcceptable, negotiate

NPY, JSON = protocol.MEDIA_NPY, protocol.MEDIA_JSON


@pytest.mark.parametrize(
    ("accept", "default", "chosen"),
    [
        (None, JSON, JSON),
        ("", NPY, NPY),
        ("*/*", JSON, JSON),
        ("application/x-npy", JSON, NPY),
        ("APPLICATION/JSON", NPY, JSON),
        ("application/*;q=0.5, application/x-npy;q=0.4", JSON, JSON),
        ("application/*;q=0.5, application/x-npy;q=0.6", JSON, NPY),
        ("application/json;q=0, */*", JSON, NPY),
        ("text/plain, */*;q=0.01", NPY, NPY),
        ("application/json;q=bogus, application/x-npy", JSON, NPY),
        ("application/json;q=nan, application/x-npy;q=0.1", JSON, NPY),
        ("application/json;q=inf, application/x-npy;q=0.1", JSON, NPY),
        ("application/json;q=2, application/x-npy;q=0.1", JSON, NPY),
        ("application/json;q=-1, application/x-npy;q=0.1", JSON, NPY),
    ],
)
def test_negotiate(accept: str | None, default: str, chosen: str) -> None:
    assert negotiate(accept, (NPY, JSON), default) == chosen


@pytest.mark.parametrize(
    "accept",
    ["text/html", "application/json;q=0, application/x-npy;q=0", "*/*;q=nan", "*/*;q=NaN"],
)
def test_negotiate_refuses_naming_the_header(accept: str) -> None:
    with pytest.raises(NotAcceptable, match="Accept"):
        negotiate(accept, (NPY, JSON), NPY)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("application/x-npy", protocol.MEDIA_NPY),
        ("Application/JSON; charset=utf-8", protocol.MEDIA_JSON),
        (None, ""),
    ],
)
def test_media_type_of_drops_parameters(header: str | None, expected: str) -> None:
    assert protocol.media_type_of(header) == expected


def test_require_media_type_names_the_header() -> None:
    assert protocol.require_media_type("application/JSON; charset=utf-8", (JSON,)) == JSON
    with pytest.raises(protocol.UnsupportedMediaType, match="'text/csv'") as caught:
        protocol.require_media_type("text/csv", (NPY, JSON))
    assert caught.value.code == "unsupported_media_type"
