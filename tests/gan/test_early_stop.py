"""``--until quality`` (gan.train.early_stop): the score, the stopping rule by hand, and a
run through the real trainer that stops where the rule says."""

from __future__ import annotations

import json
import math

import pytest

from augment.errors import ConfigError
from gan.base import read_checkpoint
from gan.train.early_stop import QualityStop, check_until, quality_score
from gan.train.trainer import train
from tests.gan.test_trainer import TinyGan, cfg, tiny, tiny_slices


def test_dcgan_score_is_valid_rate_minus_the_hu_miss_in_iqrs():
    probe = {"valid_rate": 0.9375, "lesion_hu_mean": 60.0, "real_lesion_hu_median": 55.0,
             "real_lesion_hu_q25": 50.0, "real_lesion_hu_q75": 70.0}  # fmt: skip
    # 15 of 16 draws, 5 HU off the median with a 20 HU IQR: 0.9375 - 5 / 20.
    assert quality_score(probe) == pytest.approx(0.6875)
    # Nothing pasted: no lesion HU at all, the full penalty.
    assert quality_score({**probe, "valid_rate": 0.0, "lesion_hu_mean": math.nan}) == -1.0


def test_pix2pix_scores_ssim_and_cyclegan_has_no_score():
    assert quality_score({"ssim": 0.71, "psnr": 20.0, "lesion_hu_mean": 50.0}) == 0.71
    assert quality_score({"contrast_retained": 1.2, "abs_mean_hu_diff": 9.0}) is None
    with pytest.raises(ConfigError, match="cyclegan.*--steps"):
        check_until("quality", "cyclegan", has_score=False)
    check_until("steps", "cyclegan", has_score=False)


def test_stops_after_patience_probes_without_an_improvement_over_min_delta():
    stop = QualityStop(patience=3, min_delta=0.005)
    # 0.5 and 0.6 improve; 0.6 and 0.602 do not beat 0.6 + 0.005; nor does 0.59.
    decisions = [stop.update(step, s) for step, s in enumerate([0.5, 0.6, 0.6, 0.602, 0.59], 1)]
    assert decisions == [False, False, False, False, True]
    assert (stop.best, stop.best_step) == (0.6, 2)
    # An improvement resets the count; a NaN (a skipped probe) counts as none.
    stop = QualityStop(patience=2, min_delta=0.0)
    assert [stop.update(i, s) for i, s in enumerate([0.1, math.nan, 0.2, math.nan, 0.2], 1)] == [
        False, False, False, False, True,
    ]  # fmt: skip
    with pytest.raises(ConfigError, match="patience"):
        QualityStop(0)


class PlateauGan(TinyGan):
    """TinyGan whose probe reports an SSIM that rises for two probes, then stays flat."""

    quality_scored = True
    scores = [0.5, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7]

    def quality_probe(self, data, data_b, *, seed):
        self.probes_taken = getattr(self, "probes_taken", 0) + 1
        return {"ssim": self.scores[self.probes_taken - 1]}


def test_a_quality_run_stops_at_the_step_the_rule_gives_and_resumes(tmp_path):
    out = tmp_path / "run"
    module = tiny(PlateauGan)
    result = train(module, tiny_slices(), None, cfg(out, 10, grid_every=1, until="quality", patience=2))
    # Probes at steps 1, 2, 3, 4: best 0.7 at step 2, then two flat probes: stop at 4.
    assert result["step"] == 4 and result["stopped_early"] is True
    assert read_checkpoint(out / "last.pt")["step"] == 4
    records = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    quality = [r for r in records if "quality/score" in r]
    assert [r["step"] for r in quality] == [1, 2, 3, 4]
    assert quality[-1]["quality/best_step"] == 2 and quality[-1]["quality/best"] == 0.7
    # --resume trains on towards --steps (the user asked for more).
    again = train(tiny(PlateauGan), tiny_slices(), None, cfg(out, 6, grid_every=1, resume=True))
    assert again["step"] == 6 and again["stopped_early"] is False


def test_quality_is_refused_where_it_cannot_stop(tmp_path):
    with pytest.raises(ConfigError, match="tiny-test's quality probe gives no score"):
        train(tiny(), tiny_slices(), None, cfg(tmp_path / "a", 4, grid_every=1, until="quality"))
    with pytest.raises(ConfigError, match="grid_every > 0"):
        cfg(tmp_path / "b", 4, grid_every=0, until="quality")
    with pytest.raises(ConfigError, match="until must be one of"):
        cfg(tmp_path / "c", 4, until="forever")
    assert not (tmp_path / "a").exists()
