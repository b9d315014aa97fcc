"""The ``decide`` search mode: seeds go where a comparison is still undecided.

Every variant and the baseline first run ``decide.min_seeds`` seeds. Each time a trial
finishes, every variant is read against the baseline on the space's objective (the mean
validation AUROC of the probe plan; never a test metric) with
:func:`analysis.decisions.decide`. A variant that is still open (undecided and not stopped
for futility), and whose seeds so far all have their pair, gets its next seed (and the
baseline that seed, when it lacks it) at once, without waiting for a whole round. A variant
that is decided gets no more seeds: its queued seeds are cancelled, and so is a queued
baseline seed no open variant needs any more. The sweep ends when every variant is decided,
stopped for futility or at ``max_seeds`` pairs, or earlier at the GPU-hour budget
(:class:`~deri_sweep.orchestration.searchers.BudgetSearcher` wraps this searcher).

A failed trial (an error, or a non-finite objective) is run again on the same seed, up to
``max_failures`` more times; a seed that still fails is never paired (for the baseline: with
no variant), is named in ``decisions.parquet`` (``failed_seeds``) and the report, and the
variants it leaves short of a pair get their next seed instead.

Every look (a variant with at least ``min_seeds`` pairs that got a new pair or a new
decision) is appended to ``decisions.parquet`` in the run directory (variant, decision,
pairs, delta and its interval, p-values, the predicted probability of a decision, the
sweep's GPU-hours then), so the report can say why each variant stopped.
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
        seeds: the pretraining seeds, in the order they are used (at least ``rule.min_seeds``;
            continued by consecutive seeds when failed trials need more).
        rule: the decision rule (margin, alpha, seed limits, futility, direction).
        run_dir: where ``decisions.parquet`` is written.
        max_failures: how many times a failed (variant, seed) trial is run again (``trial.max_failures``).
    """

    def __init__(
        self,
        variants: dict[str, dict[str, Any]],
        baseline: str,
        seeds: list[int],
        rule: DecideRule,
        run_dir: Path,
        max_failures: int = 0,
    ) -> None:
        super().__init__(metric="objective", mode="max" if rule.maximize else "min")
        if len(seeds) < rule.min_seeds:
            raise ValueError(f"decide needs {rule.min_seeds} seeds, got {len(seeds)}")
        if max_failures < 0:
            raise ValueError(f"max_failures must be >= 0, got {max_failures}")
        self.variants = {name: dict(overrides) for name, overrides in variants.items()}
        self.baseline, self.seeds, self.rule, self.run_dir = baseline, list(seeds), rule, Path(run_dir)
        self.max_failures = max_failures
        self.values: dict[str, dict[int, float]] = {name: {} for name in self.variants}
        self.requested: dict[str, list[int]] = {name: [] for name in self.variants}
        self.queue: list[tuple[str, int]] = []
        self.assigned: dict[str, tuple[str, int]] = {}
        self.running: set[str] = set()
        self.hours: dict[str, float] = {}
        self.failures: dict[tuple[str, int], int] = {}
        self.failed: dict[str, list[int]] = {name: [] for name in self.variants}
        self.cancelled: list[tuple[str, int]] = []
        self.decisions: dict[str, Decision] = {}
        self.log_rows: list[dict[str, Any]] = []
        order = [baseline, *sorted(n for n in self.variants if n != baseline)]
        for seed in self.seeds[: rule.min_seeds]:  # seed-major: the first pairs complete early
            for name in order:
                self._request(name, seed)

    @property
    def max_trials(self) -> int:
        """An upper bound on the trials this searcher suggests (every seed slot failing on every try)."""
        return len(self.variants) * 2 * self.rule.max_seeds * (1 + self.max_failures)

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
        """Record the trial's objective; run a failed one again or give its seed up; re-read; queue what is needed."""
        self.running.discard(trial_id)
        if trial_id not in self.assigned:
            return
        if result and "hours" in result:
            self.hours[trial_id] = float(result["hours"])
        variant, seed = self.assigned[trial_id]
        value = math.nan if error or not result else float(result.get("objective", math.nan))
        if not math.isfinite(value):
            tries = self.failures[(variant, seed)] = self.failures.get((variant, seed), 0) + 1
            done = variant != self.baseline and variant in self.decisions and self.decisions[variant].final
            if tries <= self.max_failures and not done:  # a variant decided meanwhile needs no retry
                log.warning("decide: trial %s (%s, seed %d) failed; running it again (%d of %d)", trial_id, variant,
                            seed, tries, self.max_failures)  # fmt: skip
                self.queue.insert(0, (variant, seed))
                return
            log.warning("decide: %s seed %d failed %d times: it is not paired", variant, seed, tries)
            self.failed[variant].append(seed)
        self.values[variant][seed] = value
        self._update(trial_id, gave_up=variant if not math.isfinite(value) else None)

    def _lost(self, variant: str, seed: int) -> bool:
        """The seed can never give this variant a pair: its own or the baseline's trial failed for good."""
        return seed in self.failed[variant] or seed in self.failed[self.baseline]

    def _resolved(self, variant: str) -> bool:
        """Every seed the variant asked for is paired, or lost to a failure (nothing of it is pending)."""
        done, base = self.values[variant], self.values[self.baseline]
        return all(self._lost(variant, s) or (s in done and s in base) for s in self.requested[variant])

    def _pairs(self, variant: str) -> int:
        done, base = self.values[variant], self.values[self.baseline]
        return sum(math.isfinite(done.get(s, math.nan)) and math.isfinite(base.get(s, math.nan)) for s in done)

    def _next_seed(self, variant: str) -> int | None:
        """The first seed the variant has not asked for and the baseline has not lost (None past the seed cap)."""
        if len(self.requested[variant]) >= 2 * self.rule.max_seeds:  # failures ate as many seeds again: give up
            return None
        for seed in self.seeds:
            if seed not in self.requested[variant] and seed not in self.failed[self.baseline]:
                return seed
        self.seeds.append(max(self.seeds) + 1)
        return self.seeds[-1]

    def _cancel(self) -> None:
        """Drop queued trials nobody needs: a final variant's, a lost pair's, a baseline seed no open variant wants."""
        final = {n for n, d in self.decisions.items() if d.final}
        wanted = {s for n, seeds in self.requested.items() if n != self.baseline and n not in final
                  for s in seeds if not self._lost(n, s)}  # fmt: skip
        keep = []
        for variant, seed in self.queue:
            if variant == self.baseline:
                drop = seed not in wanted
            else:
                drop = variant in final or seed in self.failed[self.baseline]
            if drop:
                self.requested[variant].remove(seed)
                self.cancelled.append((variant, seed))
                log.info("decide: cancelled the queued trial of %s seed %d (no longer needed)", variant, seed)
            else:
                keep.append((variant, seed))
        self.queue = keep

    def _update(self, trigger: str, gave_up: str | None = None) -> None:
        decisions = decide(self.values, self.baseline, self.rule, self.decisions, seed_order=self.seeds)

        def look(d: Decision | None) -> tuple[str, int, bool] | None:
            return (d.decision, d.n_pairs, d.futile) if d is not None and d.n_pairs >= self.rule.min_seeds else None

        # a look: a variant with min_seeds pairs or more that has a new pair or a new decision
        changed = [n for n, d in decisions.items() if look(d) is not None and look(d) != look(self.decisions.get(n))]
        if gave_up in decisions and gave_up not in changed:  # a seed given up: its variant's row names it
            changed.append(gave_up)
        self.decisions = decisions
        self._cancel()
        for name, decision in decisions.items():
            if decision.final or not self._resolved(name) or self._pairs(name) >= self.rule.max_seeds:
                continue
            seed = self._next_seed(name)
            if seed is None:
                continue
            if seed not in self.requested[self.baseline]:
                self._request(self.baseline, seed)
            self._request(name, seed)
        if changed or gave_up == self.baseline:
            hours = sum(self.hours.values())
            for name in changed:
                row = dataclasses.asdict(decisions[name])
                row.update(step=len(self.log_rows), time=time.time(), trigger_trial=trigger, gpu_hours=hours,
                           seeds_run=sum(s in self.values[name] for s in self.requested[name]),
                           failed_seeds=",".join(map(str, self.failed[name])))  # fmt: skip
                self.log_rows.append(row)
                log.info("decide: %s is %s after %d pairs (delta %+.4f)", name, row["decision"], row["n_pairs"],
                         row["delta"])  # fmt: skip
            self._write()

    def _write(self) -> None:
        rows = pd.DataFrame(self.log_rows)
        rows["baseline_failed_seeds"] = ",".join(map(str, self.failed[self.baseline]))  # no readings of its own
        atomic_write_bytes(self.run_dir / DECISIONS_FILE, rows.to_parquet(index=False))

    def save(self, checkpoint_path: str) -> None:
        """Persist everything (Tuner.restore continues from it)."""
        Path(checkpoint_path).write_bytes(pickle.dumps(self.__dict__))

    def restore(self, checkpoint_path: str) -> None:
        """Restore the state saved by :meth:`save`; trials that were running are waited for again."""
        self.__dict__.update(pickle.loads(Path(checkpoint_path).read_bytes()))
