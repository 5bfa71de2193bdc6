"""The `updated` filter of STAC searches, applied by the client against a server without the Filter extension."""

from __future__ import annotations

import pytest

from pipeline.catalog.search import StacQuery, search_items, updated_predicate

pytestmark = pytest.mark.stack


def test_updated_after_is_inclusive_and_filtered_by_the_client(stack_env: dict[str, str]) -> None:
    base = StacQuery(url=stack_env["STAC_API_URL"], collections=("sentinel-2-l2a",))
    everything = search_items(base)
    stamps = sorted({i.properties["updated"] for i in everything})
    assert everything and len(stamps) == 1  # the sample catalogs stamp every item alike
    same = search_items(StacQuery(url=base.url, collections=base.collections, updated_after=stamps[0]))
    assert sorted(i.id for i in same) == sorted(i.id for i in everything)  # at the instant: kept
    later = StacQuery(url=base.url, collections=base.collections, updated_after=stamps[0].replace("Z", "") + ".001+00:00")
    assert search_items(later) == []


def test_updated_after_must_be_a_zoned_instant_and_maps_to_cql2() -> None:
    with pytest.raises(ValueError, match="updated_after"):
        StacQuery(url="http://127.0.0.1:1", collections=("c",), updated_after="2025-01-01")
    assert updated_predicate("2025-01-01T00:00:00Z") == {
        "op": ">=", "args": [{"property": "updated"}, {"timestamp": "2025-01-01T00:00:00Z"}]}
