"""Researcher backends: `scripted`, `random`, `local` and `openai`, behind one interface (see `base.py`)."""

from harness.researchers.base import Researcher, ResearcherExhausted, ResearcherStopped, make_researcher

__all__ = ["Researcher", "ResearcherExhausted", "ResearcherStopped", "make_researcher"]
