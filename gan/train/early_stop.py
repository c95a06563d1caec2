"""``gan train --until quality``: stop when the quality probes stop improving.

Every probe (`gan.train.probes`, with each progress grid: ``grid_every`` steps) gives one
score, higher = better (`quality_score`):

- DCGAN: ``valid_rate`` (the share of draws that paste a lesion) minus how far the mean HU
  of the generated lesions lies from the real lesions' median, in units of the real
  lesions' interquartile range. 1.0 is every draw pasteable at exactly the real median;
  a collapsed generator (no lesion pasted) scores below 0.
- pix2pix: ``ssim`` of training lesion slices repainted from their own masks.
- CycleGAN has no score: its probe measures how well lesions are *kept*, which an
  untrained, near-identity generator already does best, so it cannot say when the
  translation is learned. ``--until quality`` is refused for it.

`QualityStop` ends the run once ``patience`` probes in a row have not beaten the best score
so far by more than ``min_delta`` (Keras' and Lightning's ``EarlyStopping`` rule); ``steps``
stays the cap. The run stops at a step boundary and writes its checkpoint there, as an
interrupted run does; the log records the best probe's step and score. The weights kept
are the last ones (with the EMA generator, a running average of the recent ones), not the
best probe's: a probe of 16 draws or 8 slices is a progress signal, too noisy to pick
weights by.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from augment.errors import ConfigError

UNTIL = ("steps", "quality")
# A probe's score must beat the best by more than this to count as an improvement: one
# draw of DCGAN's 16 (1/16 = 0.0625) is noise, so is 0.005 of pix2pix's SSIM on 8 slices.
MIN_DELTA = 0.005


def quality_score(probe: Mapping[str, float]) -> float | None:
    """The probe's score (module doc), from its un-prefixed keys; None when the model's
    probe has no score (CycleGAN) or is empty."""
    if "valid_rate" in probe:
        iqr = probe["real_lesion_hu_q75"] - probe["real_lesion_hu_q25"]
        miss = abs(probe["lesion_hu_mean"] - probe["real_lesion_hu_median"]) / max(iqr, 1.0)
        return float(probe["valid_rate"]) - (1.0 if math.isnan(miss) else miss)
    if "ssim" in probe:
        return float(probe["ssim"])
    return None


def check_until(until: str, model: str, has_score: bool) -> None:
    """Refuse ``quality`` for a model whose probe has no score (`GanModule.quality_scored`)."""
    if until == "quality" and not has_score:
        raise ConfigError(
            f"--until quality: {model}'s quality probe gives no score to stop on (CycleGAN's "
            "measures lesion preservation, which an untrained generator already scores best "
            "on); train for --steps and watch probe/* in log.jsonl"
        )


class QualityStop:
    """Early stopping on probe scores: `update` says when to stop.

    Args:
        patience: probes in a row without an improvement that end the run, >= 1.
        min_delta: what an improvement must exceed.
    """

    def __init__(self, patience: int, min_delta: float = MIN_DELTA) -> None:
        if patience < 1:
            raise ConfigError(f"train: patience must be >= 1, got {patience}")
        self.patience = patience
        self.min_delta = min_delta
        self.best = -math.inf
        self.best_step = 0
        self.stale = 0

    def update(self, step: int, score: float) -> bool:
        """Record the probe at ``step``; True when the run should stop here."""
        if score > self.best + self.min_delta:
            self.best, self.best_step, self.stale = score, step, 0
            return False
        self.stale += 1
        return self.stale >= self.patience


__all__ = ["MIN_DELTA", "UNTIL", "QualityStop", "check_until", "quality_score"]
