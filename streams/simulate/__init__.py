"""Seeded scenario simulator with exact ground truth, shared by the demo, the
tests and the load generator (see scenarios.py for the model, generator.py for
event timing)."""

from .generator import SimConfig, SimRun, simulate, simulate_labels
from .scenarios import SCENARIOS, Scenario, ground_truth, scenario_names

__all__ = ["SCENARIOS", "Scenario", "SimConfig", "SimRun", "ground_truth", "scenario_names", "simulate", "simulate_labels"]
