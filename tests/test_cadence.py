"""The probe cadence: candidate steps, and the budget that holds probes to a share of training time."""

import pytest
from dpo_helpers import dpo_trainer
from tiny_organism import organism_rows, watch_prompts

from probe_callback import ProbeCallback, load_report
from probe_callback.decide import cadence as cadence_module
from probe_callback.decide.cadence import Cadence


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(cadence_module.time, "perf_counter", fake)
    return fake


def test_budget_waits_until_a_probe_fits_and_learns_its_cost(clock):
    c = Cadence(every=5, budget=0.1, expected_seconds=20.0)
    c.start()
    assert [s for s in range(12) if c.candidate(s)] == [5, 10]
    clock.now = 100.0  # 100 s of training: a 20 s probe would be 20%
    assert not c.within_budget()
    clock.now = 200.0
    assert c.within_budget()
    clock.now = 215.0
    c.record(15.0)  # cheaper than expected: the next one is expected to take 15 s
    assert c.train_seconds() == pytest.approx(200.0)
    assert not c.within_budget()  # 15 + 15 > 0.1 * 200
    clock.now = 315.0
    assert c.within_budget()  # 30 <= 0.1 * 300
    summary = c.summary()
    assert summary["probe_passes"] == 1 and summary["skipped_for_budget"] == 2
    assert summary["share"] == pytest.approx(15.0 / 300.0, rel=1e-3)


def test_without_budget_every_candidate_is_probed(clock):
    c = Cadence(every=3, budget=None, expected_seconds=1e9)
    c.start()
    assert c.within_budget() and c.summary()["skipped_for_budget"] == 0


def test_budget_holds_back_probes_in_a_real_run(tiny_tokenizer, organism_factory, tmp_path):
    """A budget no tiny run can afford: every default checkpoint is skipped, none probed or light-checked,
    all counted; of its 8 logging steps' learning checks only the first runs (the next would need its
    cost to be half the budget's share of the training time since)."""
    trainer = dpo_trainer(tiny_tokenizer, organism_factory, organism_rows(n_planted=0), tmp_path, max_steps=8)
    trainer.add_callback(ProbeCallback(trainer, probe_prompts=watch_prompts(), max_new_tokens=8, probe_budget=1e-4))
    trainer.train()
    cost = load_report(tmp_path / "probe_callback")["cost"]
    candidates = 8 // cost["every_n_steps"]
    assert candidates >= 2
    assert cost["probe_passes"] == cost["light_checks"] == 0 and cost["skipped_for_budget"] == candidates
    assert cost["budget"] == 1e-4 and cost["train_seconds"] > 0
    assert cost["learning_checks"] == 1


def test_bad_budget_is_refused_before_training(tiny_tokenizer, organism_factory, tmp_path):
    trainer = dpo_trainer(tiny_tokenizer, organism_factory, organism_rows(n_planted=0), tmp_path, max_steps=2)
    with pytest.raises(ValueError, match="probe_budget"):
        ProbeCallback(trainer, probe_budget=1.5)
