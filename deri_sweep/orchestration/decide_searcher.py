"""The ``decide`` search mode: seeds go where a comparison is still undecided.

Every variant and the baseline first run ``decide.min_seeds`` seeds. Each time a trial
finishes, every variant is read against the baseline on the space's objective (the mean
validation AUROC of the probe plan; never a test metric) with
:func:`analysis.decisions.decide`. A variant that is still undecided, and whose seeds so far
all have their pair, gets its next seed (and the baseline that seed, when it lacks it) at
once, without waiting for a whole round; a decided variant gets no more seeds. The sweep
ends when every variant is decided or at ``max_seeds``, or earlier at the GPU-hour budget
(:class:`~deri_sweep.orchestration.searchers.BudgetSearcher` wraps this searcher).

Every look (a variant with at least ``min_seeds`` pairs that got a new pair) is appended to
``decisions.parquet`` in the run directory (variant, decision, pairs, delta and its interval, p-values, the look's
threshold, the sweep's GPU-hours then), so the report can say why each variant stopped.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import pickle
import time
from pathlib import Path
from typing import Any

import pandas as pd
from ray.tune.search import Searcher

from analysis.decisions import DECISIONS_FILE, DecideRule, Decision, decide
from deri_sweep.common.storage import atomic_write_bytes

log = logging.getLogger(__name__)


class DecideSearcher(Searcher):
    """Suggest (variant, seed) trials adaptively until every variant is decided.

    Args:
        variants: variant name -> overrides (the baseline included).
        baseline: the baseline variant's name.
        seeds: the pretraining seeds, in the order they are used (at least ``rule.max_seeds``).
        rule: the decision rule (margin, alpha, seed limits, direction).
        run_dir: where ``decisions.parquet`` is written.
    """

    def __init__(
        self, variants: dict[str, dict[str, Any]], baseline: str, seeds: list[int], rule: DecideRule, run_dir: Path
    ) -> None:
        super().__init__(metric="objective", mode="max" if rule.maximize else "min")
        if len(seeds) < rule.max_seeds:
            raise ValueError(f"decide needs {rule.max_seeds} seeds, got {len(seeds)}")
        self.variants = {name: dict(overrides) for name, overrides in variants.items()}
        self.baseline, self.seeds, self.rule, self.run_dir = baseline, list(seeds), rule, Path(run_dir)
        self.values: dict[str, dict[int, float]] = {name: {} for name in self.variants}
        self.requested: dict[str, list[int]] = {name: [] for name in self.variants}
        self.queue: list[tuple[str, int]] = []
        self.assigned: dict[str, tuple[str, int]] = {}
        self.running: set[str] = set()
        self.hours: dict[str, float] = {}
        self.decisions: dict[str, Decision] = {}
        self.log_rows: list[dict[str, Any]] = []
        order = [baseline, *sorted(n for n in self.variants if n != baseline)]
        for seed in self.seeds[: rule.min_seeds]:  # seed-major: the first pairs complete early
            for name in order:
                self._request(name, seed)

    def _request(self, variant: str, seed: int) -> None:
        self.requested[variant].append(seed)
        self.queue.append((variant, seed))

    def _config(self, variant: str, seed: int) -> dict[str, Any]:
        return {"variant": variant, "overrides": dict(self.variants[variant]), "seed": seed}

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        """The next queued trial; ``None`` (ask again later) while running trials may add work; else FINISHED."""
        if trial_id in self.assigned:
            return self._config(*self.assigned[trial_id])
        if self.queue:
            variant, seed = self.queue.pop(0)
            self.assigned[trial_id] = (variant, seed)
            self.running.add(trial_id)
            return self._config(variant, seed)
        return None if self.running else Searcher.FINISHED

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Track the trial's compute hours."""
        if "hours" in result:
            self.hours[trial_id] = float(result["hours"])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """Record the trial's objective (NaN when it failed), re-read the comparisons, queue what they need."""
        self.running.discard(trial_id)
        if trial_id not in self.assigned:
            return
        if result and "hours" in result:
            self.hours[trial_id] = float(result["hours"])
        variant, seed = self.assigned[trial_id]
        value = math.nan if error or not result else float(result.get("objective", math.nan))
        self.values[variant][seed] = value
        self._update(trial_id)

    def _paired_so_far(self, variant: str) -> bool:
        """Every seed the variant asked for has finished, and so has the baseline's trial of that seed."""
        done, base = self.values[variant], self.values[self.baseline]
        return all(s in done and s in base for s in self.requested[variant])

    def _update(self, trigger: str) -> None:
        decisions = decide(self.values, self.baseline, self.rule, self.decisions)

        def look(d: Decision | None) -> tuple[str, int] | None:
            return (d.decision, d.n_pairs) if d is not None and d.n_pairs >= self.rule.min_seeds else None

        # a look: a variant with min_seeds pairs or more that has a new pair or a new decision
        changed = [n for n, d in decisions.items() if look(d) is not None and look(d) != look(self.decisions.get(n))]
        for name, decision in decisions.items():
            if decision.decision != "undecided" or not self._paired_so_far(name):
                continue
            if len(self.requested[name]) >= self.rule.max_seeds:
                continue
            seed = self.seeds[len(self.requested[name])]
            if seed not in self.requested[self.baseline]:
                self._request(self.baseline, seed)
            self._request(name, seed)
        self.decisions = decisions
        if changed:
            hours = sum(self.hours.values())
            for name in changed:
                row = dataclasses.asdict(decisions[name])
                row.update(step=len(self.log_rows), time=time.time(), trigger_trial=trigger, gpu_hours=hours,
                           seeds_run=len(self.requested[name]))  # fmt: skip
                self.log_rows.append(row)
                log.info("decide: %s is %s after %d pairs (delta %+.4f)", name, row["decision"], row["n_pairs"],
                         row["delta"])  # fmt: skip
            self._write()

    def _write(self) -> None:
        atomic_write_bytes(self.run_dir / DECISIONS_FILE, pd.DataFrame(self.log_rows).to_parquet(index=False))

    def save(self, checkpoint_path: str) -> None:
        """Persist everything (Tuner.restore continues from it)."""
        Path(checkpoint_path).write_bytes(pickle.dumps(self.__dict__))

    def restore(self, checkpoint_path: str) -> None:
        """Restore the state saved by :meth:`save`; trials that were running are waited for again."""
        self.__dict__.update(pickle.loads(Path(checkpoint_path).read_bytes()))
