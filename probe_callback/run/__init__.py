"""Run plumbing around the pipeline: resume state, fault fences and folder locks, sharded and multi-node ranks.

May import any stage; imported only by the flat modules (the callback and its options).
"""
