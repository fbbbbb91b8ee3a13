"""The short-term markdown memory: round records, lessons compacted from them, rendering under a budget."""

from memory.memory import Memory, approx_tokens
from memory.records import Lesson, RoundRecord, compact

__all__ = ["Lesson", "Memory", "RoundRecord", "approx_tokens", "compact"]
