"""probe_callback: watch a DPO run from the inside, flag what it learns, blame the data that taught it.

Example:
    >>> from probe_callback import Behaviour, ProbeCallback
    >>> trainer.add_callback(ProbeCallback(trainer, probe_prompts=watch_prompts))  # doctest: +SKIP
"""

from .behaviours import Behaviour
from .callback import ProbeCallback
from .config import ProbeOptions
from .mitigate import mitigate
from .report import load_report

__all__ = ["Behaviour", "ProbeCallback", "ProbeOptions", "load_report", "mitigate"]
