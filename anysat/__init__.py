"""AnySat: one Earth-observation encoder for any resolution, scale and modality (torch only)."""

from anysat.config import SIZES, AnySatConfig
from anysat.modalities import OFFICIAL_MODALITIES, Modality, check_inputs
from anysat.model import AnySat, ModalityTokens
from anysat.official import convert_official_state_dict, load_official

__all__ = [
    "OFFICIAL_MODALITIES",
    "SIZES",
    "AnySat",
    "AnySatConfig",
    "Modality",
    "ModalityTokens",
    "check_inputs",
    "convert_official_state_dict",
    "load",
    "load_official",
]


def load(directory: str) -> AnySat:
    """Load a model saved with `AnySat.save` (safetensors weights + JSON config)."""
    return AnySat.load(directory)
