"""training/threshold_bound.py: the best any one threshold could give, counted by hand."""

import numpy as np

from training.threshold_bound import threshold_bound


def test_separable_scores_have_a_threshold_meeting_every_target():
    labels = np.array([0] * 10 + [1] * 10)
    scores = np.r_[np.linspace(0.0, 0.4, 10), np.linspace(0.6, 1.0, 10)]
    bound = threshold_bound(labels, scores)
    assert bound["at_sensitivity_97"]["specificity"] == 1.0
    assert bound["most_accurate"]["accuracy"] == 1.0
    # The candidates are the scores themselves: 0.6 flags no healthy film, 0.4 flags one
    # (specificity 90%, accuracy 95%, still on target); 0.356 flags two.
    assert bound["thresholds_meeting_targets"] == 2


def test_overlapping_scores_trade_sensitivity_for_specificity():
    # Two healthy films score above all but one pneumonia film: sensitivity >= 97% of 4
    # films means all 4, so the threshold must sit at 0.5 and flag both healthy films.
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.8, 0.9, 0.5, 0.95, 0.96, 0.97])
    bound = threshold_bound(labels, scores)
    assert bound["at_sensitivity_97"]["threshold"] == 0.5
    assert bound["at_sensitivity_97"]["specificity"] == 0.5
    # At 0.95 one pneumonia film is missed and no healthy one flagged: 7 of 8 right.
    assert bound["most_accurate"]["threshold"] == 0.95
    assert bound["most_accurate"]["accuracy"] == 0.875
    assert bound["thresholds_meeting_targets"] == 0
