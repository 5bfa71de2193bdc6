"""The project's only STAC API client: search by area, time and cloud cover, with paging, retries and timeouts.

Cloud cover is filtered on the server when it speaks the STAC API Filter (CQL2) or Query extension (Planetary
Computer and Earth Search do both) and on the client otherwise: `rustac serve`'s in-memory backend, for example,
conforms to neither and answers a filtered search with no items at all, which would silently drop data.
The same holds for `updated_after` (items whose `updated` property is at or after an instant, used by
incremental ingestion): a CQL2 filter when the server speaks the Filter extension, the client otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import pystac
from pystac_client import Client
from pystac_client.conformance import ConformanceClasses
from pystac_client.exceptions import APIError
from pystac_client.stac_api_io import StacApiIO
from urllib3 import Retry

from pipeline.errors import StacError
from pipeline.times import try_instant

__all__ = ["StacQuery", "iter_items", "open_client", "parse_item", "search_items", "updated_predicate"]

log = logging.getLogger(__name__)

BBox = tuple[float, float, float, float]


@dataclass(frozen=True)
class StacQuery:
    """One STAC item search.

    Attributes:
        url: STAC API root URL.
        collections: Collection ids to search.
        bbox: (west, south, east, north) in WGS84 degrees, or None for anywhere.
        datetime: RFC 3339 instant or interval (`"2017-06-01/2017-12-31"`), or None for any time.
        max_cloud_cover: Keep items with `eo:cloud_cover` <= this (percent); None keeps all. Items that lack
            the property are kept only when this is None.
        page_size: Items per page asked of the server (`limit`); paging continues until the search is done.
        max_items: Stop after this many items; None means all.
        updated_after: Keep items whose `updated` property is at or after this RFC 3339 instant (inclusive, so
            items sharing the instant are not missed; callers drop those they already hold). Items without
            `updated` are dropped when this is set. None keeps all.
    """

    url: str
    collections: tuple[str, ...]
    bbox: BBox | None = None
    datetime: str | None = None
    max_cloud_cover: float | None = None
    page_size: int = 100
    max_items: int | None = None
    updated_after: str | None = None

    def __post_init__(self) -> None:
        if not self.collections:
            raise ValueError("StacQuery needs at least one collection id, e.g. ('sentinel-2-l2a',)")
        if self.bbox is not None:
            west, south, east, north = self.bbox
            if not (-180 <= west <= 180 and -180 <= east <= 180 and -90 <= south < north <= 90):
                raise ValueError(f"bbox must be (west, south, east, north) in degrees, got {self.bbox}")
        if self.page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {self.page_size}")
        if self.updated_after is not None and try_instant(self.updated_after, strict=True) is None:
            raise ValueError(f"updated_after must be an RFC 3339 instant with a time zone, got {self.updated_after!r}")


def open_client(url: str, *, timeout_s: float = 30.0, retries: int = 5) -> Client:
    """Open a STAC API with a timeout and urllib3 retries (backoff on 429/5xx, also for POST searches)."""
    retry = Retry(total=retries, backoff_factor=0.5, status_forcelist=(429, 500, 502, 503, 504),
                  allowed_methods=None)  # fmt: skip
    try:
        return Client.open(url, stac_io=StacApiIO(max_retries=retry, timeout=timeout_s))
    except (APIError, OSError) as err:
        raise StacError(f"could not open the STAC API at {url}: {err}; check the URL and that it is reachable") from err


def updated_predicate(instant: str) -> dict[str, object]:
    """The CQL2-JSON predicate `updated >= instant` sent to servers with the Filter extension."""
    return {"op": ">=", "args": [{"property": "updated"}, {"timestamp": instant}]}


def _updated_since(item: pystac.Item, since: datetime) -> bool:
    raw = item.properties.get("updated")
    value = try_instant(raw)
    return value is not None and value >= since


def _cloud_filter_mode(client: Client) -> str:
    if client.conforms_to(ConformanceClasses.FILTER):
        return "filter"
    if client.conforms_to(ConformanceClasses.QUERY):
        return "query"
    return "client"


def parse_item(raw: object, *, root: Client | None = None) -> tuple[pystac.Item | None, tuple[str, str]]:
    """A STAC item from its JSON, or None and (id, reason) when it is not a valid one (never raises)."""
    item_id = str(raw.get("id", "?")) if isinstance(raw, dict) else "?"
    try:
        if not isinstance(raw, dict):
            raise TypeError(f"expected a JSON object, got {type(raw).__name__}")
        if not isinstance(raw.get("id"), str) or not raw["id"]:
            raise ValueError(f"its id is {raw.get('id')!r}, not a non-empty string")
        if raw.get("collection") is not None and not isinstance(raw["collection"], str):
            raise ValueError(f"its collection is {raw['collection']!r}, not a string")
        return pystac.Item.from_dict(raw, root=root, preserve_dict=False), (item_id, "")
    except Exception as err:  # noqa: BLE001 - pystac raises several types on malformed items
        return None, (item_id, f"not a valid STAC item: {type(err).__name__}: {err}")


def iter_items(query: StacQuery, *, client: Client | None = None,
               invalid: list[tuple[str, str]] | None = None) -> Iterator[pystac.Item]:  # fmt: skip
    """Yield the items matching `query`, page by page, following `next` links (GET or POST with a token).

    An item the server returns that is not a valid STAC item (e.g. `datetime: null` without
    `start_datetime`/`end_datetime`) is skipped and appended to `invalid` as (id, reason), never a crash.

    Raises:
        StacError: The server failed after retries.
    """
    client = client or open_client(query.url)
    kwargs: dict[str, object] = {"collections": list(query.collections), "limit": query.page_size}
    if query.bbox is not None:
        kwargs["bbox"] = list(query.bbox)
    if query.datetime is not None:
        kwargs["datetime"] = query.datetime
    mode = "none" if query.max_cloud_cover is None else _cloud_filter_mode(client)
    predicates: list[dict[str, object]] = []
    if mode == "filter":
        predicates.append({"op": "<=", "args": [{"property": "eo:cloud_cover"}, query.max_cloud_cover]})
    elif mode == "query":
        kwargs["query"] = {"eo:cloud_cover": {"lte": query.max_cloud_cover}}
    elif mode == "client":
        log.info("%s supports neither the Filter nor the Query extension: filtering eo:cloud_cover <= %s here",
                 query.url, query.max_cloud_cover)  # fmt: skip
    updated_on_server = query.updated_after is not None and client.conforms_to(ConformanceClasses.FILTER)
    if updated_on_server:
        predicates.append(updated_predicate(str(query.updated_after)))
    elif query.updated_after is not None:
        log.info("%s does not support the Filter extension: filtering updated >= %s here", query.url,
                 query.updated_after)  # fmt: skip
    if predicates:
        kwargs["filter"] = predicates[0] if len(predicates) == 1 else {"op": "and", "args": predicates}
        kwargs["filter_lang"] = "cql2-json"
    since = None if query.updated_after is None or updated_on_server else try_instant(query.updated_after, strict=True)
    yielded = 0
    try:
        for raw in client.search(**kwargs).items_as_dicts():  # type: ignore[arg-type]
            item, why = parse_item(raw, root=client)
            if item is None:
                log.warning("%s returned an invalid item: %s", query.url, why)
                if invalid is not None:
                    invalid.append(why)
                continue
            if mode == "client" and not _cloud_ok(item, query.max_cloud_cover):
                continue
            if since is not None and not _updated_since(item, since):
                continue
            yield item
            yielded += 1
            if query.max_items is not None and yielded >= query.max_items:
                return
    except APIError as err:
        raise StacError(f"STAC search at {query.url} failed: {err}") from err


def search_items(query: StacQuery, *, client: Client | None = None,
                 invalid: list[tuple[str, str]] | None = None) -> list[pystac.Item]:  # fmt: skip
    """All items matching `query` (see `iter_items`; invalid items go to `invalid`), in the server's order."""
    return list(iter_items(query, client=client, invalid=invalid))


def _cloud_ok(item: pystac.Item, max_cloud_cover: float | None) -> bool:
    if max_cloud_cover is None:
        return True
    cover = item.properties.get("eo:cloud_cover")
    return cover is not None and float(cover) <= max_cloud_cover
