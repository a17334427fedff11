"""The free-energy model of a culture (Isomura et al. 2023): trial data, ensembles, the
POMDP reading of the canonical network, offline analysis, an online form and stimulus
selection."""

from mea_control.fep.analysis import Analysis, analyze
from mea_control.fep.data import FEPInputError, TrialData, load

__all__ = ["Analysis", "FEPInputError", "TrialData", "analyze", "load"]
