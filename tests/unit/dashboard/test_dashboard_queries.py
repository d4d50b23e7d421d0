"""Pure parts of the dashboard: query filters, JSON numbers, the error -> HTTP status table."""

from __future__ import annotations

import math

import pytest

from tesserad import errors
from tesserad.dashboard.api import _metric_filters, _param_filters
from tesserad.dashboard.json_forms import finite
from tesserad.dashboard.server import HTTP_STATUS_BY_ERROR, http_status_for
from tesserad.training.tracking import MetricFilter


def test_metric_filters_parse_key_field_op_value():
    assert _metric_filters(["val_loss:last:lt:0.5", "a:b:max:ge:-1e3", "acc:min:ne:0"]) == [
        MetricFilter("val_loss", "last", "lt", 0.5),
        MetricFilter("a:b", "max", "ge", -1000.0),
        MetricFilter("acc", "min", "ne", 0.0),
    ]


@pytest.mark.parametrize(
    "raw", ["val_loss", "val_loss:last:lt", "x:best:lt:1", "x:last:neq:1", "x:last:lt:big", "x:last:lt:nan"]
)
def test_bad_metric_filters_say_the_form(raw):
    with pytest.raises(errors.InvalidArgument, match=r"val_loss:last:lt:0\.5|is not a number"):
        _metric_filters([raw])


def test_param_filters_parse_and_refuse_contradictions():
    assert _param_filters(["lr=0.1", "note=a=b"]) == {"lr": "0.1", "note": "a=b"}
    with pytest.raises(errors.InvalidArgument, match="KEY=VALUE"):
        _param_filters(["lr"])
    with pytest.raises(errors.InvalidArgument, match="filtered twice"):
        _param_filters(["lr=0.1", "lr=0.2"])
    with pytest.raises(errors.InvalidArgument) as refused:
        _param_filters(["lr=" + "1" * 6001])
    assert str(refused.value) == (
        "param filter 'lr': its value is 6001 characters long; a run's param value is at most 6000, so it "
        "would match no run"
    )


def test_non_finite_numbers_become_null_at_any_depth():
    value = {"a": [1.0, math.nan, {"b": math.inf}], "c": (-math.inf, 2), "d": "nan"}
    assert finite(value) == {"a": [1.0, None, {"b": None}], "c": [None, 2], "d": "nan"}


EXPECTED_HTTP_STATUS = {
    errors.InvalidArgument: 400,
    errors.RefusedBySignature: 400,
    errors.NotFound: 404,
    errors.AlreadyExists: 409,
    errors.FailedPrecondition: 409,
    errors.NotLoaded: 409,
    errors.OutOfRange: 400,
    errors.ResourceExhausted: 429,
    errors.NoSpace: 507,
    errors.QueueFull: 429,
    errors.DataLoss: 500,
    errors.Unauthenticated: 401,
    errors.PermissionDenied: 403,
    errors.DeadlineExceeded: 504,
    errors.Aborted: 409,
    errors.Cancelled: 499,
    errors.Unavailable: 503,
    errors.StillLoading: 503,
    errors.Overloaded: 503,
    errors.Unimplemented: 501,
    errors.Internal: 500,
}


def test_every_domain_error_has_its_http_status():
    """A subclass the table does not list (NotLoaded, StillLoading) answers as its parent."""
    domain = {
        cls
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.TesseraError) and cls is not errors.TesseraError
    }
    assert set(EXPECTED_HTTP_STATUS) == domain
    assert {cls: http_status_for(cls("x")) for cls in domain} == EXPECTED_HTTP_STATUS
    assert set(HTTP_STATUS_BY_ERROR) <= domain
    assert http_status_for(errors.TesseraError("x")) == 500
