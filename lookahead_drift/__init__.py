"""lookahead-drift: one-step generators trained with drifting and lookahead drifting models."""

__version__ = "0.1.0"
