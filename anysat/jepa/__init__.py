"""JEPA pretraining objective for AnySat: masks, predictor, losses, EMA target (no trainer inside)."""

from anysat.jepa.ema import ema_update, momentum_at
from anysat.jepa.loss import mil_nce, prediction_loss
from anysat.jepa.masks import BlockMasks, MaskConfig, sample_masks
from anysat.jepa.objective import Jepa, JepaConfig, JepaOutput, drop_dates
from anysat.jepa.predictor import Predictor

__all__ = [
    "BlockMasks",
    "Jepa",
    "JepaConfig",
    "JepaOutput",
    "MaskConfig",
    "Predictor",
    "drop_dates",
    "ema_update",
    "mil_nce",
    "momentum_at",
    "prediction_loss",
    "sample_masks",
]
