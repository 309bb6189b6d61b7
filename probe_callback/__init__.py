"""probe_callback: watch a DPO run from the inside, flag what it learns, blame the data that taught it.

Example:
    >>> from probe_callback import ProbeCallback
    >>> trainer.add_callback(ProbeCallback(trainer, probe_prompts=watch_prompts))  # doctest: +SKIP
"""

from .callback import ProbeCallback
from .config import ProbeOptions

__all__ = ["ProbeCallback", "ProbeOptions"]
