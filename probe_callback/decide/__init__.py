"""Decide: the alerts and the regression policy that turns scores into INFO, WARN and ERROR (and a pause).

May import capture, store and scoring; never a later stage (publish, run).
"""
