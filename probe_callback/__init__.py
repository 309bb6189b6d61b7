"""probe_callback: watch a DPO run from the inside, flag what it learns, blame the data that taught it.

Example:
    >>> from probe_callback import Behaviour, ProbeCallback
    >>> trainer.add_callback(ProbeCallback(trainer, probe_prompts=watch_prompts))  # doctest: +SKIP
"""

from .callback import ProbeCallback
from .capture.kept_rows import remember_kept_rows
from .config import ProbeOptions
from .mitigate import mitigate
from .publish.report import load_report
from .scoring.behaviours import Behaviour

remember_kept_rows()  # precompute_ref_log_probs=True: keep `row` an index into the user's dataset

__all__ = ["Behaviour", "ProbeCallback", "ProbeOptions", "load_report", "mitigate"]
