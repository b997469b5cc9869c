"""The accuracy guard of ``--temperature auto``: no temperature less accurate than the best by > 1 %."""

from __future__ import annotations

import numpy as np
import pytest

from starlabel.models import select_temperature
from starlabel.models._accuracy_guard import accuracy_excess, guard_temperature
from starlabel.models.cannon import Cannon


def test_excess_is_the_worst_labels_share_above_its_best():
    rmse = np.array([[100.0, 0.20], [101.0, 0.25], [150.0, 0.19], [np.nan, 0.1]])
    # Best per label over the fully scored rows: 100 and 0.19.
    np.testing.assert_allclose(accuracy_excess(rmse)[:3], [0.20 / 0.19 - 1, 0.25 / 0.19 - 1, 0.5])
    assert accuracy_excess(rmse)[3] == np.inf
    with pytest.raises(ValueError, match="candidates, labels"):
        accuracy_excess(np.ones(3))


def test_guard_refuses_the_better_score_when_it_costs_accuracy():
    temps = [1.0, 2.0, 4.0, 8.0]
    scores = [0.9, 0.5, 0.6, 0.1]  # the score alone would pick T = 8
    rmse = np.array([[120.0, 0.30], [100.0, 0.202], [100.5, 0.200], [130.0, 0.25]])
    chosen = guard_temperature(temps, scores, rmse)
    # T = 2 (0.2 % / 1 % worse on teff / logg) and 4 (0.5 % / 0) are within 1 %.
    assert chosen.temperature == 2.0 and chosen.refused == (1.0, 8.0)
    # A stricter tolerance leaves only T = 4; a looser one lets the score decide.
    assert guard_temperature(temps, scores, rmse, tolerance=0.006).temperature == 4.0
    assert guard_temperature(temps, scores, rmse, tolerance=0.5).temperature == 8.0


def test_guard_keeps_the_least_bad_compromise_when_labels_disagree():
    # Each label is best at a different T: nobody is within 1 % on both, the smallest
    # worst-label excess (T = 2: 5 %) is kept rather than failing.
    rmse = np.array([[100.0, 0.30], [105.0, 0.21], [130.0, 0.20]])
    chosen = guard_temperature([1.0, 2.0, 4.0], [0.3, 0.2, 0.1], rmse)
    assert chosen.temperature == 2.0 and chosen.refused == (1.0, 4.0)
    with pytest.raises(ValueError, match="finite score"):
        guard_temperature([1.0], [np.nan], rmse[:1])
    with pytest.raises(ValueError, match="must match"):
        guard_temperature([1.0, 2.0], [0.1], rmse)


def test_log_score_on_real_giants_no_longer_buys_width_with_accuracy(apogee_giants):
    # Measured on 300 held-out-by-fold real giants: the log score prefers T = 32
    # (every width covers the stars the model misplaces), whose posterior means are
    # 30 % worse in Teff than at T = 4; without the guard T = 32 is also the largest
    # candidate, an error. The guard refuses it and keeps T = 4.
    chosen = select_temperature(
        Cannon(apogee_giants.label_names),
        apogee_giants[:300],
        prior="kde",
        temperatures=(4.0, 32.0),
        max_temperature=32.0,
        n_folds=3,
        score="log",
    )
    assert chosen.temperatures == (4.0, 32.0)
    assert np.argmax(chosen.log_score) == 1  # the score alone picks T = 32
    assert chosen.temperature == 4.0 and chosen.accuracy_refused == (32.0,)
    assert np.all(chosen.rmse[1] > 1.1 * chosen.rmse[0])
    assert chosen.to_dict()["accuracy_refused"] == [32.0]
