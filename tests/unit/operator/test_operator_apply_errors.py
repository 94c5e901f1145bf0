"""apply: apiserver errors classified as temporary (retry later) or permanent, as kopf does."""

import json

import pytest

from sft_operator.apply import ApiError, PermanentError, TemporaryError, classify


def status_body(code, reason, message):
    return json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason,
                       "message": message})


@pytest.mark.parametrize(
    "code, temporary",
    [
        pytest.param(429, True, id="throttled is temporary"),
        pytest.param(500, True, id="an internal error is temporary"),
        pytest.param(503, True, id="an unavailable apiserver is temporary"),
        pytest.param(504, True, id="a gateway timeout is temporary"),
        pytest.param(0, True, id="no response at all is temporary"),
        pytest.param(400, False, id="a bad request is permanent"),
        pytest.param(403, False, id="forbidden (RBAC, quota, admission) is permanent"),
        pytest.param(404, False, id="not found is permanent"),
        pytest.param(422, False, id="an invalid object is permanent"),
    ],
)
def test_classify(code, temporary):
    err = classify(ApiError(code, "x", status_body(code, "x", "m")))
    assert isinstance(err, TemporaryError if temporary else PermanentError)
    assert err.permanent is (not temporary)


def test_retry_after_becomes_the_delay():
    err = classify(ApiError(429, "TooManyRequests", status_body(429, "TooManyRequests", "slow down"), retry_after=7.0))
    assert isinstance(err, TemporaryError) and err.delay == 7.0


@pytest.mark.parametrize(
    "body, message",
    [
        pytest.param(status_body(403, "Forbidden", 'jobs.batch "x" is forbidden: exceeded quota: q'), 'jobs.batch "x" is forbidden: exceeded quota: q',
                     id="the Status message is what kubectl would print"),
        pytest.param("upstream connect error", "upstream connect error", id="a non-JSON body is kept as it is"),
        pytest.param("", "Forbidden", id="an empty body falls back to the reason"),
    ],
)
def test_message_of_the_apiserver(body, message):
    assert ApiError(403, "Forbidden", body).message == message
