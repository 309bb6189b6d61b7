"""Capture: the datapoint vectors and learning records DPO's own forwards yield, and the dataset row of each.

Imports nothing from the later stages (store, scoring, decide, publish, run).
"""
