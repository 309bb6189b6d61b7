"""Score: the probe passes through the models, supervised behaviours, emergent clusters, and attribution.

May import capture and store; never a later stage (decide, publish, run).
"""
