"""trace-forge: mine visually grounded reasoning traces with MCTS over a teacher VLM."""

__version__ = "0.1.0"
