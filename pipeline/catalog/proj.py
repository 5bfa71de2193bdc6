"""The one reader of an item's EPSG code from the STAC projection extension (`proj:code` or `proj:epsg`).

Projection v2 writes `proj:code: "EPSG:32633"`, v1 wrote `proj:epsg: 32633`; catalogs carry either or both,
on the item or on its assets. Used by the manifest (the CRS recorded per item) and the raster reader (the CRS
a chip is read in), so both always agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pystac

__all__ = ["epsg_of", "item_epsg"]


def epsg_of(fields: Mapping[str, Any]) -> int | None:
    """The EPSG code in one mapping of item properties or asset fields, or None (absent or not EPSG)."""
    code = fields.get("proj:code")
    if isinstance(code, str) and code.upper().startswith("EPSG:") and code[5:].strip().isdigit():
        return int(code[5:])
    epsg = fields.get("proj:epsg")
    if isinstance(epsg, int) and not isinstance(epsg, bool):
        return epsg
    if isinstance(epsg, str) and epsg.strip().isdigit():
        return int(epsg)
    return None


def item_epsg(item: pystac.Item | Mapping[str, Any], asset: str | None = None) -> int | None:
    """EPSG code of an item: the named asset's, else the item's, else the first asset that declares one.

    Args:
        item: A pystac item or its dict form.
        asset: Prefer this asset's own code (assets of one item may lie in different CRSs).
    """
    if isinstance(item, pystac.Item):
        props: Mapping[str, Any] = item.properties
        assets = {k: a.extra_fields for k, a in item.assets.items()}
    else:
        props, assets = item.get("properties", {}), item.get("assets", {})
    order = ([assets[asset]] if asset and asset in assets else []) + [props] + list(assets.values())
    for fields in order:
        found = epsg_of(fields)
        if found is not None:
            return found
    return None
