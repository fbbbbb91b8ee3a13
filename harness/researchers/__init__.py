"""Researcher backends: `scripted`, `random` and `local`, behind one interface (see `base.py`)."""

from harness.researchers.base import Researcher, ResearcherExhausted, make_researcher

__all__ = ["Researcher", "ResearcherExhausted", "make_researcher"]
