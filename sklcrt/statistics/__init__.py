"""Test statistics: a null model fitted once per response, evaluated on many resamples at once."""

from sklcrt.statistics._base import BaseStatistic
from sklcrt.statistics.nb_score import NBScoreStatistic
from sklcrt.statistics.ols import OLSStatistic

__all__ = ["BaseStatistic", "NBScoreStatistic", "OLSStatistic"]
