"""The one RFC 3339 reader: instants, intervals with open ends, and what it refuses."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from pipeline.catalog.proj import item_epsg
from pipeline.times import Interval, parse_instant, parse_interval, try_instant

UTC = timezone.utc


def test_instants() -> None:
    assert parse_instant("2017-06-01T10:20:30Z") == datetime(2017, 6, 1, 10, 20, 30, tzinfo=UTC)
    assert parse_instant("2017-06-01t10:20:30.123456789+02:00") == datetime(
        2017, 6, 1, 10, 20, 30, 123456, tzinfo=timezone(timedelta(hours=2)))
    assert try_instant("2017-06-01T10:20:30") == datetime(2017, 6, 1, 10, 20, 30, tzinfo=UTC)  # lenient: UTC
    for bad in ("2017-06-01", "20170601T102030Z", "2017-W22-4T10:00:00Z", "2017-02-30T00:00:00Z", "", "soon"):
        with pytest.raises(ValueError):
            parse_instant(bad)
        assert try_instant(bad) is None
    with pytest.raises(ValueError, match="no time zone"):
        parse_instant("2017-06-01T10:20:30")


def test_intervals_with_open_ends() -> None:
    t0, t1 = datetime(2017, 6, 1, tzinfo=UTC), datetime(2018, 1, 1, tzinfo=UTC)
    assert parse_interval("2017-06-01T00:00:00Z/2018-01-01T00:00:00Z") == Interval(t0, t1)
    assert parse_interval("2017-06-01T00:00:00Z/..") == Interval(t0, None)
    assert parse_interval("../2018-01-01T00:00:00Z") == Interval(None, t1)
    assert parse_interval("/2018-01-01T00:00:00Z") == Interval(None, t1)
    assert parse_interval("2017-06-01T00:00:00Z") == Interval(t0, t0)
    assert t1 in Interval(t0, None) and t0 not in Interval(None, t0 - timedelta(seconds=1))
    assert Interval(t0, None).text() == "2017-06-01T00:00:00Z/.."
    for bad, match in (("../..", "closed end"), ("2018-01-01T00:00:00Z/2017-06-01T00:00:00Z", "starts after"),
                       ("a/b/c", "one '/'"), ("2017-06-01/..", "RFC 3339")):
        with pytest.raises(ValueError, match=match):
            parse_interval(bad)


def test_one_epsg_reader_for_items_and_assets() -> None:
    item = {"properties": {"proj:code": "EPSG:32633"}, "assets": {"a": {"proj:epsg": 32632}}}
    assert item_epsg(item) == 32633 and item_epsg(item, "a") == 32632
    assert item_epsg({"properties": {"proj:epsg": 32631}, "assets": {}}) == 32631
    assert item_epsg({"properties": {}, "assets": {"b": {"proj:code": "epsg:3035"}}}) == 3035
    assert item_epsg({"properties": {"proj:code": "EPSG:abc", "proj:epsg": True}, "assets": {}}) is None
    assert item_epsg({"properties": {"proj:code": "IAU_2015:30100"}, "assets": {}}) is None
