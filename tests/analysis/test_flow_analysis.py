"""The windowed average GD's loss is compared with, by hand."""

import numpy as np

from sharpcli.analysis.flow import windowed_average


def test_windowed_average_is_centred_and_narrows_at_the_ends():
    steps = np.arange(7)
    values = np.array([0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 6.0])
    got = windowed_average(steps, values, window=4)
    # step 0: itself; 1: steps 0-2; 2..4: ±2; 5: 4-6; 6: itself
    assert np.allclose(got, [0.0, 1 / 3, 2 / 5, 3 / 5, 8 / 5, 7 / 3, 6.0])
    # a period-2 oscillation averages to its mean inside the window
    assert np.allclose(windowed_average(np.arange(100), np.tile([0.0, 2.0], 50), 20)[10:90], 1.0,
                       atol=0.1)
