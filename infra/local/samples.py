"""Where the committed samples live and how the stack turns them into served catalogs."""

from __future__ import annotations

from pathlib import Path

__all__ = ["PROJECT_ROOT", "SAMPLES_DIR", "SHARED_L1C_DIR", "build_sample_catalogs"]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SAMPLES_DIR = PROJECT_ROOT / "data" / "samples"
# The 41 MB Sentinel-2 L1C scene is not committed; it is used when a `shared/data` folder sits beside the checkout.
SHARED_L1C_DIR = PROJECT_ROOT.parent / "shared" / "data" / "sentinel2-l1c-virginia"


def build_sample_catalogs(out_dir: Path, *, include_l1c: bool = True) -> tuple[Path, ...]:
    """Build the Planetary-Computer-like sample catalogs into `out_dir`.

    Returns:
        The collection JSON and item ndjson files, in the order the STAC server loads them.
    """
    from infra.local.catalogs import build_catalogs

    l1c = SHARED_L1C_DIR if include_l1c and SHARED_L1C_DIR.is_dir() else None
    built = build_catalogs(out_dir, samples_dir=SAMPLES_DIR, l1c_dir=l1c)
    return tuple(p for c in built for p in (c.collection_json, c.items_ndjson))
