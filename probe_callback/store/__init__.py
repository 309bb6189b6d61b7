"""Store: the append-only, crash-safe files the captured vectors and learning records are kept in.

May import capture; never a later stage (scoring, decide, publish, run).
"""
