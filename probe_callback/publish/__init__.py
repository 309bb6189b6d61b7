"""Publish: console, JSONL and W&B sinks, the report (JSON) and its HTML page.

May import any earlier stage (capture, store, scoring, decide); never run/ or the flat modules.
"""
