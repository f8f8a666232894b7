"""Optuna drives the search over layouts; numpy scores each layout's inner knobs at once.

A trial picks a layout (tp, then pp, cp, ep among the values valid for the earlier picks), and
its objective returns the best predicted MFU among the layout's inner candidates that fit in
memory. The vectorized cost model scores the candidates of every layout in one call on the
first trial (`score_space`; one call per layout paid numpy's fixed cost 56 times for a
500B model on 10,000 GPUs), and later trials look their layout up. A layout with nothing that
fits is recorded as PRUNED with the reason. Each trial stores its best plans as user
attributes, so the study (in memory, or in a shared storage several workers write to) holds
everything the report needs.

The default sampler is Optuna's BruteForceSampler: it visits every layout once, so the
result is the exact optimum of the cost model over the declared space. `sampler="tpe"` with
`n_trials` samples instead (for spaces too large to enumerate); `exhaustive_best` gives the
exact answer to compare against.

Shared studies: a study records the fingerprint of its space and refuses another one. A
worker that has nothing left to try waits for trials still RUNNING in other workers, so every
worker returns the optimum over every layout. A trial RUNNING longer than
$PARTUNE_STALE_TRIAL_S seconds (default 120; trials take milliseconds) lost its worker (e.g.
SIGKILL): `recover_stale_trials` marks it FAIL and queues its layout again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import numpy as np
import optuna

from cost_models.analytical import TIME_TERMS, estimate_batch
from cost_models.plan_arrays import PlanArrays, concat, to_plan
from cost_models.specs import Plan, SpecError
from tuner.space import (
    Layout,
    Space,
    cp_choices,
    ep_choices,
    inner_candidates,
    layouts,
    pp_choices,
    tp_choices,
)

KEEP_PER_LAYOUT = 3
# Plans per estimate_batch call when a whole space is scored (about 0.5 s and 200 MB of
# arrays at this size; typical spaces hold 1,000-50,000).
BATCH_CANDIDATES = 200_000
STALE_RUNNING_S = 120.0  # a trial takes milliseconds; one RUNNING this long lost its worker
STALE_ENV = "PARTUNE_STALE_TRIAL_S"  # overrides STALE_RUNNING_S (tests, fast restarts)
WAIT_POLL_S = 0.05  # how often a finished worker checks on trials still running elsewhere


@dataclass(frozen=True, slots=True, kw_only=True)
class Ranked:
    plan: Plan
    mfu: float
    step_time_s: float
    tokens_per_s: float
    peak_memory_bytes: float
    breakdown_s: dict[str, float]
    memory_bytes: dict[str, float]


@dataclass(frozen=True, slots=True, kw_only=True)
class LayoutResult:
    layout: Layout
    best: tuple[Ranked, ...]  # best first; empty if nothing fits
    reason: str | None  # why nothing fits
    candidates: int


def memory_limit_bytes(space: Space, headroom: float) -> float:
    return space.cluster.gpu.memory_bytes * (1.0 - headroom)


def score_layout(space: Space, layout: Layout, headroom: float,
                 keep: int = KEEP_PER_LAYOUT) -> LayoutResult:
    """Score every inner candidate of a layout; keep the `keep` best that fit (at most
    KEEP_PER_LAYOUT). The whole space is scored on the first call and remembered: one
    estimate_batch call pays numpy's fixed cost once for all layouts instead of per layout
    (results/search/bench_search.txt)."""
    result = score_space(space, headroom).get(layout)
    if result is None:  # not a layout of the space (e.g. a trial enqueued by hand)
        result = _score_chunk(space, [(layout, inner_candidates(space, layout))],
                              headroom)[layout]
    return replace(result, best=result.best[:keep])


@functools.lru_cache(maxsize=32)
def score_space(space: Space, headroom: float) -> dict[Layout, LayoutResult]:
    """Every layout of the space scored, in batches of about BATCH_CANDIDATES plans."""
    out: dict[Layout, LayoutResult] = {}
    chunk: list[tuple[Layout, PlanArrays]] = []
    size = 0
    for layout in layouts(space):
        plans = inner_candidates(space, layout)
        chunk.append((layout, plans))
        size += len(plans)
        if size >= BATCH_CANDIDATES:
            out.update(_score_chunk(space, chunk, headroom))
            chunk, size = [], 0
    out.update(_score_chunk(space, chunk, headroom))
    return out


def _score_chunk(space: Space, chunk: list[tuple[Layout, PlanArrays]],
                 headroom: float) -> dict[Layout, LayoutResult]:
    parts = [plans for _, plans in chunk if len(plans)]
    plans = concat(parts) if parts else None  # no plans: every layout gets its reason
    est = estimate_batch(space.model, space.cluster, plans) if parts else None
    limit = memory_limit_bytes(space, headroom)
    out, start = {}, 0
    for layout, part in chunk:
        out[layout] = _layout_result(layout, plans, est, start, start + len(part), limit)
        start += len(part)
    return out


def _layout_result(layout: Layout, plans: PlanArrays | None, est, lo: int, hi: int,
                   limit: float) -> LayoutResult:
    """The KEEP_PER_LAYOUT best plans of rows lo:hi that fit under `limit`, or the reason."""
    if hi == lo:
        return LayoutResult(layout=layout, best=(), candidates=0,
                            reason="no global batch in range is divisible by dp x micro-batch")
    peak = est.peak_memory_bytes[lo:hi]
    fits = peak <= limit
    if not fits.any():
        return LayoutResult(layout=layout, best=(), candidates=hi - lo,
                            reason=f"needs at least {float(peak.min()) / 1e9:.1f} GB per GPU, "
                                   f"limit {limit / 1e9:.1f} GB")
    score = np.where(fits, est.mfu[lo:hi], -np.inf)
    order = np.argsort(-score, kind="stable")[:KEEP_PER_LAYOUT]
    best = tuple(_ranked(plans, est, lo + int(i)) for i in order if np.isfinite(score[i]))
    return LayoutResult(layout=layout, best=best, reason=None, candidates=hi - lo)


def _ranked(plans: PlanArrays, est, i: int) -> Ranked:
    return Ranked(plan=to_plan(plans, i), mfu=float(est.mfu[i]),
                  step_time_s=float(est.step_time_s[i]),
                  tokens_per_s=float(est.tokens_per_s[i]),
                  peak_memory_bytes=float(est.peak_memory_bytes[i]),
                  breakdown_s={k: float(est.breakdown_s[k][i]) for k in TIME_TERMS},
                  memory_bytes={k: float(v[i]) for k, v in est.memory_bytes.items()})


def suggest_layout(trial: optuna.Trial, space: Space) -> Layout:
    """tp, then pp, cp, ep among the values valid for the earlier picks.

    Optuna's categorical distributions cannot change their choices between trials, so each
    conditional parameter is named after its parents ("pp|tp8"): a tree BruteForceSampler
    enumerates and TPE learns per branch.
    """
    tp = trial.suggest_categorical("tp", tp_choices(space))
    pp = trial.suggest_categorical(f"pp|tp{tp}", pp_choices(space, tp))
    cp = trial.suggest_categorical(f"cp|tp{tp}|pp{pp}", cp_choices(space, tp, pp))
    ep = trial.suggest_categorical(f"ep|tp{tp}|pp{pp}|cp{cp}",
                                   ep_choices(space, tp, pp, cp))
    layout = Layout(tp=tp, pp=pp, cp=cp, ep=ep)
    trial.set_user_attr("layout", layout.key)
    return layout


def ranked_to_json(r: Ranked) -> str:
    doc = asdict(r)
    doc["plan"] = {k: (str(v) if k in ("recompute", "precision") else v)
                   for k, v in doc["plan"].items()}
    return json.dumps(doc)


def ranked_from_json(text: str) -> Ranked:
    doc = json.loads(text)
    return Ranked(**{**doc, "plan": Plan(**doc["plan"])})


def make_objective(space: Space, headroom: float) -> Callable[[optuna.Trial], float]:
    def objective(trial: optuna.Trial) -> float:
        result = score_layout(space, suggest_layout(trial, space), headroom)
        trial.set_user_attr("candidates", result.candidates)
        if not result.best:
            trial.set_user_attr("infeasible", result.reason)
            raise optuna.TrialPruned(result.reason)
        trial.set_user_attr("best", [ranked_to_json(r) for r in result.best])
        return result.best[0].mfu
    return objective


def make_sampler(name: str, seed: int, shared: bool = False) -> optuna.samplers.BaseSampler:
    """`shared`: several workers write one study. Brute force over a conditional space can
    then stop a worker before every layout ran (optuna issue 5780); avoid_premature_stop
    trades a few duplicate trials for full coverage."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if name == "brute":
        return optuna.samplers.BruteForceSampler(seed=seed, avoid_premature_stop=shared)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=10)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise SpecError(f"--sampler {name!r} is not one of: brute, tpe, random")


def stale_threshold_s() -> float:
    """Age after which a RUNNING trial counts as lost: $PARTUNE_STALE_TRIAL_S or 120 s."""
    text = os.environ.get(STALE_ENV, "")
    try:
        value = float(text) if text else STALE_RUNNING_S
    except ValueError:
        raise SpecError(f"${STALE_ENV}={text!r} must be a number of seconds") from None
    if value < 0:
        raise SpecError(f"${STALE_ENV}={text!r} must be >= 0 seconds")
    return value


def recover_stale_trials(study: optuna.Study, older_than_s: float | None = None) -> int:
    """Fail RUNNING trials whose worker died (e.g. SIGKILL) and queue their layouts again.

    Only the worker whose RUNNING -> FAIL update lands re-queues the layout, so workers that
    recover at the same time queue it once. The FAIL trial itself holds the same params, so
    Optuna's `skip_if_exists` would always skip: it must stay off.
    """
    limit_s = stale_threshold_s() if older_than_s is None else older_than_s
    now = time.time()
    recovered = 0
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        started = trial.datetime_start.timestamp() if trial.datetime_start else now
        if now - started < limit_s:
            continue
        try:
            failed = study._storage.set_trial_state_values(
                trial._trial_id, optuna.trial.TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker recovered it first
        if failed:
            study.enqueue_trial(trial.params)
            recovered += 1
    return recovered


def space_fingerprint(space: Space, headroom: float) -> str:
    return hashlib.sha256(repr((space, headroom)).encode()).hexdigest()[:16]


def describe(space: Space) -> str:
    return f"{space.model.name} on {space.num_gpus} x {space.cluster.gpu.name}"


def claim_study(study: optuna.Study, space: Space, headroom: float) -> None:
    """A study holds one search: refuse to mix in trials of another space (or headroom)."""
    mine = space_fingerprint(space, headroom)
    held = study.user_attrs.get("space_fingerprint")
    if held is None:
        study.set_user_attr("space_fingerprint", mine)
        study.set_user_attr("space", describe(space))
    elif held != mine:
        raise SpecError(f"study {study.study_name!r} holds a search of "
                        f"{study.user_attrs.get('space', 'another space')} with other settings; "
                        f"give this search of {describe(space)} its own --study-name")


def await_other_workers(study: optuna.Study, objective, progress: bool,
                        stale_after_s: float | None = None) -> None:
    """Brute force stops a worker once every layout is finished or RUNNING in another worker.

    Wait for those trials so this worker's answer covers every layout; a trial RUNNING longer
    than the stale threshold lost its worker, so recover it and score its layout here.
    """
    running = (optuna.trial.TrialState.RUNNING,)
    for _ in range(3):
        while study.get_trials(deepcopy=False, states=running):
            if recover_stale_trials(study, stale_after_s):
                break
            time.sleep(WAIT_POLL_S)
        else:
            return
        study.optimize(objective, show_progress_bar=progress, gc_after_trial=False)


def run_study(study: optuna.Study, space: Space, *, headroom: float, n_trials: int | None,
              timeout_s: float | None = None, progress: bool = False,
              stale_after_s: float | None = None) -> None:
    """Optimize until the sampler has seen every layout (brute force) or n_trials ran."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if n_trials is not None and n_trials < 1:
        raise SpecError(f"--trials {n_trials} must be >= 1")
    claim_study(study, space, headroom)
    total = len(layouts(space))
    objective = make_objective(space, headroom)
    brute = isinstance(study.sampler, optuna.samplers.BruteForceSampler)
    if not brute and n_trials is None and timeout_s is None:
        n_trials = total  # a sampler that never stops by itself: one trial per layout
    if brute:
        seen = {tuple(sorted(t.params.items())) for t in study.get_trials(deepcopy=False)
                if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)}
        if len(seen) >= total:
            return  # every layout is in the study already (a finished or resumed search)
        # The sampler stops the study itself once every layout has been tried; the bound
        # only gives Optuna's progress bar its length.
    budget = n_trials if n_trials is not None or not brute else total - len(seen)
    study.optimize(objective, n_trials=budget, timeout=timeout_s,
                   show_progress_bar=progress, gc_after_trial=False)
    if brute and n_trials is None and timeout_s is None:
        await_other_workers(study, objective, progress, stale_after_s)


def best_per_layout(ranked: list[Ranked]) -> list[Ranked]:
    """The first (best) plan of each (tp, pp, cp, ep) layout, order kept."""
    seen, out = set(), []
    for r in ranked:
        key = (r.plan.tp, r.plan.pp, r.plan.cp, r.plan.ep)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def collect(study: optuna.Study) -> tuple[list[Ranked], dict[str, str]]:
    """All kept plans of the study, best first, and the infeasible layouts with reasons."""
    ranked: dict[str, Ranked] = {}
    infeasible: dict[str, str] = {}
    for trial in study.get_trials(deepcopy=False):
        key = trial.user_attrs.get("layout", str(trial.params))
        if trial.state == optuna.trial.TrialState.COMPLETE:
            for text in trial.user_attrs.get("best", []):
                r = ranked_from_json(text)
                ranked[r.plan.name + str(r.plan)] = r
        elif trial.state == optuna.trial.TrialState.PRUNED:
            infeasible[key] = trial.user_attrs.get("infeasible", "pruned")
    return sorted(ranked.values(), key=lambda r: (-r.mfu, r.plan.name)), infeasible


def exhaustive_best(space: Space, headroom: float) -> Ranked | None:
    """The exact optimum by a plain loop over every layout (the search's reference)."""
    best = None
    for layout in layouts(space):
        result = score_layout(space, layout, headroom, keep=1)
        if result.best and (best is None or result.best[0].mfu > best.mfu):
            best = result.best[0]
    return best
