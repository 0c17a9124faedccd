"""A latency session: the measurements and predictor of one search (or one `profile`) at one image
size and scope. It measures the profile plan, fits the predictor, and measures networks whole when
the guard, verification or the Pareto front ask, refitting the correction on everything measured."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

from ..errors import MaedetError
from ..progress import Progress
from ..structure import Structure
from .measurer import Measurer
from .plan import ProfilePlan, profile_plan
from .latency_cache import PriorRows, read_prior
from .predictor import LatencyPredictor, adapt_predictor, build_predictor, cross_validated_errors
from .requests import block_item, block_requests, network_item, network_requests


@dataclass(frozen=True)
class ErrorSummary:
    """Relative errors in short: MAPE (%), the shares within +-5% and +-10%, the worst (%) and the
    mean signed error (bias, %)."""

    count: int
    mape_pct: float | None
    within_5pct: float | None
    within_10pct: float | None
    max_abs_pct: float | None
    bias_pct: float | None

    @classmethod
    def of(cls, errors: Sequence[float]) -> "ErrorSummary":
        if not errors:
            return cls(0, None, None, None, None, None)
        absolute = [abs(e) for e in errors]
        count = len(errors)
        return cls(count, 100 * sum(absolute) / count, sum(a <= 0.05 for a in absolute) / count,
                   sum(a <= 0.10 for a in absolute) / count, 100 * max(absolute), 100 * sum(errors) / count)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


PRIOR_WALKS = 3          # with a prior, this target measures the seed and this many walks of the plan
PRIOR_MIN_BLOCKS = 10    # a prior needs at least this many of the plan's blocks measured


class LatencySession:
    """The measurements and predictor of one search at one image size and scope. With a prior (a
    cache file holding another device's or target's measurements of the same plan), only the seed
    and PRIOR_WALKS walks are measured here, and the prior's predictor is scaled to them
    (`adapt_predictor`)."""

    def __init__(self, measurer: Measurer, space: str, init: Structure, image_size: tuple[int, int], scope: str,
                 max_channels: int = 2048, walks: int = 12, prior_cache: str | None = None) -> None:
        self.measurer = measurer
        self.init = init
        self.image_size = image_size
        self.scope = scope
        self.full_plan: ProfilePlan = profile_plan(space, init, image_size, max_channels, walks)
        self.prior: PriorRows | None = None
        self.plan = self.full_plan
        if prior_cache is not None:
            items = [block_item(*placed) for placed in self.full_plan.blocks]
            self.prior = read_prior(prior_cache, items, measurer.cache.device, measurer.cache.target)
            self.plan = profile_plan(space, init, image_size, max_channels, min(walks, PRIOR_WALKS))
        self.plan_networks: list[tuple[Structure, float]] = []
        self.extra_networks: list[tuple[Structure, float]] = []   # measured by this search, in order
        self.predicted_before: dict[tuple, float] = {}   # what the predictor said before each was measured
        self.base: LatencyPredictor | None = None
        self.fit_s = 0.0
        self.block_errors: list[float] = []

    def seed_ms(self) -> float:
        """The seed measured whole: the first measurement, so a backend that cannot run fails fast."""
        return self.measurer.networks([self.init], self.image_size, self.scope)[0]

    def prepare(self, progress: Progress | None = None) -> LatencyPredictor:
        """Measure what the plan asks (cached entries are reused) and fit the predictor. Blocks and
        networks are one batch, interleaved, so the correction is fitted on networks timed
        alongside their blocks."""
        blocks = self.plan.blocks
        requests = interleave(block_requests(blocks), network_requests(self.plan.networks, self.image_size,
                                                                        self.scope))
        measured = dict(zip((r.item for r in requests), self.measurer.measure(requests, progress)))
        start = time.perf_counter()
        # Blocks timed while other programs held the CPU are left to the regression, while
        # enough quiet ones remain to fit it.
        samples = [(b, h, w, measured[block_item(b, h, w)]) for b, h, w in blocks]
        quiet = [sample for sample in samples if block_item(*sample[:3]) not in self.measurer.contended]
        samples = quiet if len(quiet) >= len(samples) // 2 else samples
        self.plan_networks = [(s, measured[network_item(s, self.scope, self.image_size)]) for s in self.plan.networks]
        batch = self.measurer.target.batch
        if self.prior is None:
            self.base = build_predictor(self.image_size, self.scope, batch, samples, [])
        else:
            self.base = adapt_predictor(self.prior_predictor(), samples)
        self.block_errors = cross_validated_errors(samples, batch, channel_step=self.base.channel_step)
        self.fit_s += time.perf_counter() - start
        return self.predictor()

    def prior_predictor(self) -> LatencyPredictor:
        """The predictor the prior's measurements of the full plan fit."""
        rows = self.prior.rows
        blocks = [(b, h, w, rows[block_item(b, h, w)].latency_ms) for b, h, w in self.full_plan.blocks
                  if block_item(b, h, w) in rows]
        if len(blocks) < PRIOR_MIN_BLOCKS:
            raise MaedetError(f"the prior ({self.prior.source}) measured {len(blocks)} of this plan's "
                              f"{len(self.full_plan.blocks)} blocks; it needs >= {PRIOR_MIN_BLOCKS} (profile the "
                              "same space, seed, image size and scope there)", setting="latency_prior")
        return build_predictor(self.image_size, self.scope, self.measurer.target.batch, blocks, [])

    def is_contended(self, structure: Structure) -> bool:
        return network_item(structure, self.scope, self.image_size) in self.measurer.contended

    def networks(self) -> list[tuple[Structure, float]]:
        """Every network measured whole so far: the plan's, then this search's."""
        return self.plan_networks + self.extra_networks

    def predictor(self) -> LatencyPredictor:
        """The block regression with the correction fitted on every network measured so far, except
        contended ones (too slow by an unknown amount). Those still count as measured: a budget
        check on them errs on the safe side."""
        start = time.perf_counter()
        networks = self.networks()
        predictor = self.base.with_correction([(s, ms) for s, ms in networks if not self.is_contended(s)])
        predictor.measured_networks.update((s.key(), ms) for s, ms in networks)
        self.fit_s += time.perf_counter() - start
        return predictor

    def measure(self, structures: Sequence[Structure], predictor: LatencyPredictor | None = None) -> list[float]:
        """Measure networks whole (cache first) and add them to the correction's data; `predictor`'s
        numbers for the new ones are kept, to judge it on networks it had not seen."""
        known = {s.key(): ms for s, ms in self.networks()}
        fresh = [s for s in dict.fromkeys(structures) if s.key() not in known]
        for structure, ms in zip(fresh, self.measurer.networks(fresh, self.image_size, self.scope)):
            self.extra_networks.append((structure, ms))
            known[structure.key()] = ms
            if predictor is not None:
                self.predicted_before[structure.key()] = predictor.predicted(structure)
        return [known[s.key()] for s in structures]

    def fit_report(self, predictor: LatencyPredictor) -> dict:
        """How well the predictor explains what it was fitted on: blocks (5-fold cross-validated)
        and networks (the correction's residuals)."""
        networks = [(s, ms) for s, ms in self.networks() if not self.is_contended(s)]
        errors = [predictor.predicted(s) / ms - 1 for s, ms in networks]
        return {"blocks": len(self.block_errors), "block_cv": ErrorSummary.of(self.block_errors).to_dict(),
                "networks": len(networks), "network_fit": ErrorSummary.of(errors).to_dict(),
                "contended_left_out": len(self.measurer.contended)}


def interleave(first: Sequence, second: Sequence) -> list:
    """`second`'s items spread evenly through `first` (both kept in order)."""
    if not second:
        return list(first)
    merged, step = [], (len(first) + len(second)) / len(second)
    slots = {int(i * step + step / 2) for i in range(len(second))}
    rest, others = iter(first), iter(second)
    for position in range(len(first) + len(second)):
        merged.append(next(others) if position in slots else next(rest))
    return merged
