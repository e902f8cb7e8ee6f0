"""Answers and transport failures become the SDK's exceptions, one function doing the mapping."""

from __future__ import annotations

import inspect
import pickle

import httpx
import numpy as np
import pytest
import respx
from sdk_helpers import MOCK_URL, problem

import poolgrad
from poolgrad import AsyncClient, Client, _exceptions, protocol
from poolgrad._exceptions import _make_status_error

CONTRACT_CODES = {
    "malformed_tensor": poolgrad.MalformedTensorError,
    "unauthorized": poolgrad.UnauthorizedError,
    "session_not_found": poolgrad.SessionNotFoundError,
    "no_forward": poolgrad.NoForwardError,
    "stale_step": poolgrad.StaleStepError,
    "payload_too_large": poolgrad.PayloadTooLargeError,
    "unsupported_media_type": poolgrad.UnsupportedMediaTypeError,
    "not_acceptable": poolgrad.NotAcceptableError,
    "invalid_spec": poolgrad.InvalidSpecError,
    "invalid_tensor": poolgrad.InvalidTensorError,
    "shape_mismatch": poolgrad.ShapeMismatchError,
    "capacity_exceeded": poolgrad.CapacityError,
    "store_unavailable": poolgrad.StoreUnavailableError,
}


def response(answer: httpx.Response) -> httpx.Response:
    answer.request = httpx.Request("POST", f"{MOCK_URL}/v1/sessions")
    return answer


def test_every_exception_class_is_public() -> None:
    # poolgrad.__all__ is the one list of public names; _exceptions keeps none of its own.
    defined = {
        name
        for name, value in vars(_exceptions).items()
        if inspect.isclass(value)
        and issubclass(value, poolgrad.PoolgradError)
        and value.__module__ == _exceptions.__name__
    }
    assert len(defined) == 25
    assert defined <= set(poolgrad.__all__)
    assert all(getattr(poolgrad, name) is getattr(_exceptions, name) for name in defined)


@pytest.mark.parametrize(("code", "cls"), CONTRACT_CODES.items())
def test_every_contract_code_has_its_own_class(code: str, cls: type[poolgrad.APIError]) -> None:
    status = protocol.PROBLEMS[code].status
    error = _make_status_error(response(problem(status, code, f"detail naming {code}")))
    assert type(error) is cls
    assert isinstance(error, poolgrad.APIError)
    assert isinstance(error, poolgrad.PoolgradError)
    assert (error.status, error.code) == (status, code)
    assert error.title == protocol.PROBLEMS[code].title
    assert error.detail == f"detail naming {code}"
    assert error.request_id == "srv-req-1"
    assert f"detail naming {code}" in str(error)
    assert "srv-req-1" in str(error)


@pytest.mark.parametrize("code", sorted(protocol.PROBLEMS))
def test_every_catalogued_code_maps_to_a_class_of_its_status(code: str) -> None:
    status = protocol.PROBLEMS[code].status
    error = _make_status_error(response(problem(status, code)))
    assert error.status == status
    assert error.code == code
    generic = {500: poolgrad.InternalServerError, 405: poolgrad.APIError, 408: poolgrad.APIError}
    assert isinstance(error, CONTRACT_CODES.get(code, generic.get(status, poolgrad.APIError)))


@pytest.mark.parametrize(
    ("status", "body", "cls"),
    [
        (422, {"code": "something_new", "detail": "x"}, poolgrad.UnprocessableEntityError),
        (404, {"detail": "no such route"}, poolgrad.NotFoundError),
        (400, {"code": "stale_step", "detail": "wrong status"}, poolgrad.BadRequestError),
        (409, {"code": "conflict"}, poolgrad.ConflictError),
        (412, {}, poolgrad.PreconditionFailedError),
        (503, {}, poolgrad.ServiceUnavailableError),
        (502, None, poolgrad.InternalServerError),
        (418, None, poolgrad.APIError),
    ],
)
def test_unknown_or_missing_codes_fall_back_on_the_status(
    status: int, body: dict[str, str] | None, cls: type[poolgrad.APIError]
) -> None:
    answer = (
        httpx.Response(status, json=body)
        if body is not None
        else httpx.Response(status, text="<html>bad gateway</html>")
    )
    error = _make_status_error(response(answer))
    assert type(error) is cls
    assert error.status == status
    if body is None:
        assert error.code is None
        assert error.detail == "<html>bad gateway</html>"
        assert error.body == "<html>bad gateway</html>"


def test_unauthorized_names_both_ways_to_pass_a_key() -> None:
    error = _make_status_error(response(problem(401, "unauthorized", "missing bearer token")))
    assert "api_key=" in str(error)
    assert "POOLGRAD_API_KEY" in str(error)


def test_connection_refused_is_an_api_connection_error_naming_the_fixes() -> None:
    with respx.mock(base_url=MOCK_URL) as router, Client(MOCK_URL, max_retries=0) as client:
        router.get("/healthz").mock(side_effect=httpx.ConnectError("refused"))
        with pytest.raises(poolgrad.APIConnectionError) as caught:
            client.health()
    error = caught.value
    assert not isinstance(error, poolgrad.APITimeoutError)
    assert isinstance(error.__cause__, httpx.ConnectError)
    assert "base_url=" in str(error)
    assert "POOLGRAD_BASE_URL" in str(error)
    assert error.request_id is not None


@pytest.mark.parametrize(
    "exc", [httpx.ConnectTimeout, httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout]
)
def test_every_timeout_is_an_api_timeout_error(exc: type[httpx.TimeoutException]) -> None:
    with respx.mock(base_url=MOCK_URL) as router, Client(MOCK_URL, max_retries=0) as client:
        router.get("/healthz").mock(side_effect=exc)
        with pytest.raises(poolgrad.APITimeoutError) as caught:
            client.health()
    assert isinstance(caught.value, poolgrad.APIConnectionError)
    assert isinstance(caught.value.__cause__, exc)


def test_error_carries_the_request_id_the_client_sent() -> None:
    with respx.mock(base_url=MOCK_URL) as router, Client(MOCK_URL) as client:
        route = router.post("/v1/gradient").mock(
            return_value=httpx.Response(
                422,
                json={"status": 422, "code": "invalid_spec", "detail": "mode 'mean'"},
                headers={"Content-Type": protocol.MEDIA_PROBLEM},
            )
        )
        with pytest.raises(poolgrad.InvalidSpecError, match="mode 'mean'") as caught:
            client.gradient(np.zeros((1, 2, 2, 1)), np.zeros((1, 1, 1, 1)), mode="max")
    # The answer (a proxy's, say) echoed no id: the error names the one the client sent.
    sent = route.calls.last.request.headers["X-Request-ID"]
    assert len(sent) == 32
    assert caught.value.request_id == sent
    assert f"[request id {sent}]" in str(caught.value)


def test_an_echoed_request_id_wins_over_the_one_sent() -> None:
    answer = problem(404, "session_not_found")
    answer.request = httpx.Request("GET", MOCK_URL, headers={"X-Request-ID": "sent-id"})
    assert _make_status_error(answer).request_id == "srv-req-1"


@pytest.mark.parametrize("cls", [poolgrad.APIError, *CONTRACT_CODES.values()])
def test_api_errors_pickle_without_their_response(cls: type[poolgrad.APIError]) -> None:
    error = cls(
        "409 no_forward: none yet",
        status=409,
        code="no_forward",
        title="No forward",
        detail="none yet",
        request_id="r-1",
        body={"code": "no_forward"},
        response=httpx.Response(409),
    )
    error.add_note("while training")
    clone = pickle.loads(pickle.dumps(error))
    assert type(clone) is cls
    assert str(clone) == str(error)
    assert (clone.status, clone.code, clone.title, clone.detail, clone.request_id, clone.body) == (
        409,
        "no_forward",
        "No forward",
        "none yet",
        "r-1",
        {"code": "no_forward"},
    )
    assert clone.response is None
    assert clone.__notes__ == ["while training"]


def test_a_mapped_answer_pickles() -> None:
    error = _make_status_error(response(problem(412, "stale_step", "step 3 is gone")))
    clone = pickle.loads(pickle.dumps(error))
    assert isinstance(clone, poolgrad.StaleStepError)
    assert clone.detail == "step 3 is gone"


@pytest.mark.parametrize(
    "exc",
    [httpx.DecodingError("bad gzip"), httpx.TooManyRedirects("loop")],
    ids=["decoding", "redirects"],
)
def test_request_errors_that_are_not_transport_failures_are_ours_and_final(
    exc: httpx.RequestError,
) -> None:
    with respx.mock(base_url=MOCK_URL) as router, Client(MOCK_URL) as client:
        route = router.get("/healthz").mock(side_effect=exc)
        with pytest.raises(poolgrad.APIResponseError, match=str(exc)) as caught:
            client.health()
    assert isinstance(caught.value, poolgrad.PoolgradError)
    assert caught.value.__cause__ is exc
    assert route.call_count == 1  # an answer came: repeating it would not help


@pytest.mark.anyio
async def test_async_request_errors_are_ours() -> None:
    async with AsyncClient(MOCK_URL) as client:
        with respx.mock(base_url=MOCK_URL) as router:
            router.get("/healthz").mock(side_effect=httpx.DecodingError("bad br"))
            with pytest.raises(poolgrad.APIResponseError, match="bad br"):
                await client.health()


def test_a_closed_client_raises_our_error_naming_the_problem() -> None:
    client = Client(MOCK_URL)
    client.close()
    with pytest.raises(poolgrad.PoolgradError, match="poolgrad client is closed"):
        client.health()
    http = httpx.Client()
    http.close()
    with pytest.raises(poolgrad.PoolgradError, match="http_client= it was given is closed"):
        Client(MOCK_URL, http_client=http).health()


@pytest.mark.anyio
async def test_a_closed_async_client_raises_our_error() -> None:
    client = AsyncClient(MOCK_URL)
    await client.close()
    with pytest.raises(poolgrad.PoolgradError, match="poolgrad client is closed"):
        await client.health()


@pytest.mark.anyio
async def test_async_client_maps_answers_and_transport_failures() -> None:
    async with AsyncClient(MOCK_URL, max_retries=0) as client:
        with respx.mock(base_url=MOCK_URL) as router:
            router.post("/v1/sessions").mock(return_value=problem(422, "invalid_spec", "ties 'x'"))
            router.get("/healthz").mock(side_effect=httpx.ReadTimeout)
            with pytest.raises(poolgrad.InvalidSpecError, match="ties 'x'") as caught:
                await client.create_session(ties="first")
            assert caught.value.request_id == "srv-req-1"
            with pytest.raises(poolgrad.APITimeoutError) as timeout:
                await client.health()
            assert isinstance(timeout.value.__cause__, httpx.ReadTimeout)


def test_undecodable_success_body_is_a_poolgrad_error_not_a_wire_error() -> None:
    with respx.mock(base_url=MOCK_URL) as router, Client(MOCK_URL) as client:
        router.post("/v1/gradient").mock(
            return_value=httpx.Response(200, content=b"\x00" * 3, headers={"Content-Type": "x/y"})
        )
        with pytest.raises(poolgrad.PoolgradError, match="do not decode"):
            client.gradient(np.zeros((1, 2, 2, 1)), np.zeros((1, 1, 1, 1)))
