"""Calibration to Coinglass: fit the parameters Coinglass does not publish (leverage mix, representative position
size, lookback) to the screenshots of a window, as plain functions (the `model_calibration` asset and `liq calibrate`
are thin wrappers).

How it stays fast: the screenshots are read once into levels and profiles, the lake's inputs once (the longest
lookback before the first day), and each trial replays only the days that have screenshots, slicing the arrays it
already holds (one replay is a few hundredths of a second). A trial's score is the screenshots' mean hit rate, with
precision and rank correlation as smaller terms (`objective`), exactly as `validation_scores` computes them.

Honest scoring: the screenshots are split in time, the earlier ones fit the parameters and the later ones (other
days when there are at least two) score them, beside the registry's defaults on the same held-out screenshots. The
model uses fitted parameters only when they beat the defaults there (`fitted_overrides`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from liq_pipeline import model_io
from liq_pipeline.lake import Lake
from liq_pipeline.model import ModelConfig, ModelInputs, run_model
from liq_pipeline.model.config import DEFAULT_LOOKBACK_DAYS, DEFAULT_POSITION_USD, MAX_LOOKBACK_DAYS
from liq_pipeline.symbols import SymbolSpec, load_registry
from liq_pipeline.validation import daily
from liq_pipeline.validation.scores import _write_atomic, coinglass_scores
from liq_pipeline.validation.screenshot import parse_screenshot_name

# Weights of the objective: hit rate first; precision and rank correlation break its ties (hit rate moves in steps
# of 1/levels per screenshot) and steer the search between them.
OBJECTIVE_WEIGHTS = {"hit_rate": 1.0, "precision": 0.1, "rank_correlation": 0.5}
DEFAULT_LOOKBACKS = (3, 7, DEFAULT_LOOKBACK_DAYS)
# Representative position sizes tried, the default first: sizes within one margin tier give the same replay.
DEFAULT_POSITIONS = (DEFAULT_POSITION_USD, 2_000.0, 40_000.0, 150_000.0, 1_000_000.0)
HOLDOUT_SHARE = 0.3
WINDOW_DAYS = 7  # the asset's default window, up to the newest screenshot
COORDINATE_STEPS = (2.0, 1.4)  # multiplicative moves on one leverage's weight, one round each


class CalibrationError(ValueError):
    """What the user must fix before a calibration can run (too few screenshots, no data); the message says it."""


@dataclass(frozen=True)
class Shot:
    """One screenshot as read once: what `coinglass_scores` needs, at its capture time (UTC, naive)."""

    file: str
    captured_at: datetime
    levels: list
    profile: Any
    price_range: tuple[float, float]
    price: float | None  # the last 1-minute close before the capture


@dataclass
class CalibrationResult:
    symbol: str
    start: date
    end: date
    params: dict[str, Any]  # fitted: leverage, leverage_weights, position_usd, lookback_days
    default_params: dict[str, Any]
    holdout: dict[str, Any]
    default_holdout: dict[str, Any]
    train: dict[str, Any]
    default_train: dict[str, Any]
    n_train: int
    n_holdout: int
    train_files: list[str]
    holdout_files: list[str]
    trials: int
    seconds: float
    skipped: list[str] = field(default_factory=list)

    @property
    def beats_defaults(self) -> bool:
        return beats(self.holdout, self.default_holdout)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["start"], out["end"] = self.start.isoformat(), self.end.isoformat()
        out["beats_defaults"] = self.beats_defaults
        return out


def beats(fitted: dict[str, Any], default: dict[str, Any]) -> bool:
    """Whether held-out scores are better than the defaults': a higher hit rate, or the same and a higher objective."""
    a, b = fitted.get("hit_rate"), default.get("hit_rate")
    if a is None:
        return False
    if b is None or not math.isclose(a, b, abs_tol=1e-9):
        return b is None or a > b
    return fitted["objective"] > default["objective"] + 1e-9


# --- reading the window once ---------------------------------------------------------------------------------------


def read_shots(folder: Path, lake: Lake, symbol: str, start: date, end: date) -> tuple[list[Shot], list[str]]:
    """Every readable screenshot of `symbol` captured from `start` to `end` (inclusive), in capture order, with the
    price at its capture time from the lake's klines; and why the others were skipped. Read once per calibration:
    OCR takes about a second a screenshot, a trial a few hundredths."""
    days = [start + timedelta(days=i) for i in range((end - start).days + 1)]
    columns = ["open_time", "low", "high", "close"]
    klines = lake.read("klines", symbol, [start - timedelta(days=1), *days], columns=columns).to_pandas()
    shots, skipped = [], []
    for day in days:
        # The lake's klines cross-check each price axis, as `coinglass_levels` does: a refused reading is skipped.
        found, why = daily.read_day(folder, symbol, day, klines if len(klines) else None)
        shots += found
        skipped += [w for w in why if w not in skipped]  # a missing folder is said once, not once a day
    out = []
    for s in sorted(shots, key=lambda s: s.name.captured_at):
        when = s.name.captured_at.astimezone(UTC).replace(tzinfo=None)
        before = klines[klines["open_time"] < pd.Timestamp(when)] if len(klines) else klines
        price = float(before["close"].iloc[-1]) if len(before) else None
        if not s.reading.levels:
            skipped.append(f"{s.path.name}: no Coinglass levels read")
            continue
        out.append(Shot(s.path.name, when, s.reading.levels, s.reading.profile, s.reading.price_range, price))
    return out, skipped


def split_in_time(
    shots: Sequence[Shot], holdout_share: float = HOLDOUT_SHARE
) -> tuple[list[Shot], list[Shot]]:
    """Earlier screenshots to fit, later ones to score. With screenshots on two days or more, whole days go to one
    side (the last `holdout_share` of the days, at least one), so a day's similar captures never sit on both."""
    shots = sorted(shots, key=lambda s: s.captured_at)
    days = sorted({s.captured_at.date() for s in shots})
    if len(days) >= 2:
        n_hold = min(len(days) - 1, max(1, round(len(days) * holdout_share)))
        cut = days[-n_hold]
        return [s for s in shots if s.captured_at.date() < cut], [
            s for s in shots if s.captured_at.date() >= cut
        ]
    n_hold = min(len(shots) - 1, max(1, round(len(shots) * holdout_share)))
    return shots[:-n_hold], shots[-n_hold:]


# --- replaying trials ----------------------------------------------------------------------------------------------


def state_time(shot: Shot, step_minutes: int) -> pd.Timestamp:
    """The model state a screenshot is compared with: the last step ended by its capture (as `validation_scores`)."""
    return pd.Timestamp(shot.captured_at).floor(timedelta(minutes=step_minutes))


def model_day(shot: Shot, step_minutes: int) -> date:
    """The model partition holding that state: the day its step starts in (a 00:00 state ends the day before)."""
    return (state_time(shot, step_minutes) - timedelta(minutes=step_minutes)).date()


def _ns(values: Any) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind == "M":
        return arr.astype("datetime64[ns]").view(np.int64)
    if arr.dtype.kind == "m":
        return arr.astype("timedelta64[ns]").view(np.int64)
    return arr.astype(np.int64)


class Replayer:
    """Scores a config on a set of screenshots by replaying, for each day with screenshots, the lookback the model
    asset would replay for that day, from inputs loaded once."""

    def __init__(self, spec: SymbolSpec, base: ModelConfig, inputs: ModelInputs):
        self.spec, self.base, self.inputs = spec, base, inputs
        self._cache: dict[tuple[date, int], ModelInputs] = {}

    def _day_inputs(self, day: date, lookback: int) -> ModelInputs:
        key = (day, lookback)
        if key not in self._cache:
            ts = _ns(self.inputs.ts)
            lo = np.searchsorted(ts, pd.Timestamp(day - timedelta(days=lookback - 1)).value)
            hi = np.searchsorted(ts, pd.Timestamp(day + timedelta(days=1)).value)
            self._cache[key] = self.inputs.steps(int(lo), int(hi))
        return self._cache[key]

    def score(self, config: ModelConfig, shots: Sequence[Shot]) -> dict[str, Any]:
        by_day: dict[date, list[tuple[Shot, int]]] = {}
        for s in shots:
            as_of = state_time(s, config.step_minutes)
            by_day.setdefault(model_day(s, config.step_minutes), []).append((s, as_of.value))
        rows = []
        for day, items in sorted(by_day.items()):
            inputs = self._day_inputs(day, config.lookback_days)
            if inputs.n_steps == 0:
                rows += [None] * len(items)
                continue
            first = min(a for _, a in items) - config.step_ns
            result = run_model(self.spec, config, inputs, keep_from=np.datetime64(first, "ns"))
            ends = _ns(result.ts_end)
            for s, as_of in items:
                i = np.searchsorted(ends, as_of)
                if i >= ends.size or ends[i] != as_of or s.price is None:
                    rows.append(None)
                    continue
                long, short = result.long_usd[i], result.short_usd[i]
                live = (long + short) > 0  # the stored heatmap keeps only non-empty cells: score the same
                rows.append(
                    coinglass_scores(
                        s.levels,
                        s.profile,
                        result.prices[live],
                        long[live],
                        short[live],
                        s.price,
                        float(config.price_bin),
                        price_range=s.price_range,
                    )
                )
        return summarize(rows)


def summarize(rows: Sequence[dict | None]) -> dict[str, Any]:
    """Mean of each score over the screenshots that have it, and the weighted `objective` (a missing mean is 0)."""
    out: dict[str, Any] = {"n_screenshots": len(rows), "n_scored": sum(r is not None for r in rows)}
    objective = 0.0
    for name, weight in OBJECTIVE_WEIGHTS.items():
        values = [r[name] for r in rows if r is not None and r.get(name) is not None]
        out[name] = float(np.mean(values)) if values else None
        objective += weight * (out[name] or 0.0)
    out["objective"] = objective
    return out


# --- the search ----------------------------------------------------------------------------------------------------


def candidate_mixes(default: Sequence[float]) -> list[tuple[float, ...]]:
    """Starting mixes: the registry's, uniform, tilted to low and to high leverage, and one peaked on each leverage."""
    n = len(default)
    ramp = np.power(2.0, np.arange(n))
    mixes = [
        tuple(default),
        tuple(np.full(n, 1.0 / n)),
        tuple(ramp[::-1] / ramp.sum()),
        tuple(ramp / ramp.sum()),
    ]
    for i in range(n):
        peaked = np.full(n, 0.4 / max(n - 1, 1))
        peaked[i] = 0.6
        mixes.append(tuple(peaked))
    return [tuple(round(float(w), 6) for w in m) for m in mixes]


def search(
    evaluate: Callable[[ModelConfig], dict[str, Any]],
    spec: SymbolSpec,
    default: ModelConfig,
    lookbacks: Iterable[int],
    positions: Iterable[float],
) -> tuple[ModelConfig, dict[str, Any], int]:
    """A small deterministic search, each stage from the best so far: lookbacks x `candidate_mixes`, position
    sizes, rounds of coordinate moves on the weights, lookbacks again. Returns the best config, its train scores and
    the number of trials (distinct replays of the train screenshots)."""
    seen: dict[tuple, dict[str, Any]] = {}
    trials = 0

    def trial(lookback: int, position: float, weights: Sequence[float]) -> tuple[ModelConfig, dict] | None:
        nonlocal trials
        try:
            cfg = replace(
                default, lookback_days=lookback, position_usd=float(position), leverage_weights=tuple(weights)
            )
            cfg = cfg.resolve(spec)
        except ValueError:
            return None  # e.g. a position whose margin tier does not allow the mix's highest leverage
        tier = spec.tier_for(cfg.position_usd)
        key = (lookback, tier.floor, tuple(round(w, 9) for w in cfg.leverage_weights))
        if key not in seen:  # sizes within one tier replay identically: score once
            seen[key] = evaluate(cfg)
            trials += 1
        return cfg, seen[key]

    best: tuple[ModelConfig, dict] | None = None

    def consider(found: tuple[ModelConfig, dict] | None) -> bool:
        nonlocal best
        if found is None or (best is not None and found[1]["objective"] <= best[1]["objective"] + 1e-12):
            return False
        best = found
        return True

    # Position size only picks the margin tier (tenths of a percent on liquidation prices): mixes and lookbacks
    # first at the default size, then sizes, then finer moves on the weights, then the lookbacks again.
    for lookback in lookbacks:
        for mix in candidate_mixes(default.leverage_weights):
            consider(trial(lookback, default.position_usd, mix))
    if best is None:
        raise CalibrationError(f"{spec.symbol}: no parameter combination could be replayed")
    for position in positions:
        consider(trial(best[0].lookback_days, position, best[0].leverage_weights))
    for factor in COORDINATE_STEPS:
        for i in range(len(default.leverage)):
            for f in (factor, 1.0 / factor):
                w = np.array(best[0].leverage_weights)
                w[i] *= f
                consider(trial(best[0].lookback_days, best[0].position_usd, tuple(w / w.sum())))
    for lookback in lookbacks:
        consider(trial(lookback, best[0].position_usd, best[0].leverage_weights))
    return best[0], best[1], trials


def _load(lake: Lake, spec: SymbolSpec, config: ModelConfig, first: date, last: date) -> ModelInputs:
    """The inputs from `first` - lookback + 1 to `last`, read once (DuckDB over the lake)."""
    span = (last - first).days + config.lookback_days
    days = [last - timedelta(days=i) for i in range(span - 1, -1, -1)]
    slices = [lake.slice(t, spec.symbol, days) for t in ("klines", "open_interest", "agg_trades")]
    try:
        return model_io.load_inputs(last, replace(config, lookback_days=span), *slices).inputs
    except model_io.MissingInputError as exc:
        raise CalibrationError(f"{spec.symbol}: no data for {last} in the lake: {exc}") from exc


def calibrate(
    symbol: str,
    start: date,
    end: date,
    folder: Path,
    lake: Lake,
    *,
    lookbacks: Sequence[int] = DEFAULT_LOOKBACKS,
    positions: Sequence[float] = DEFAULT_POSITIONS,
    holdout_share: float = HOLDOUT_SHARE,
) -> CalibrationResult:
    """Fit `symbol`'s leverage mix, position size and lookback to the screenshots captured `start`..`end` in
    `folder` (earlier ones), score fitted and default parameters on the later ones."""
    started = time.perf_counter()
    if end < start:
        raise CalibrationError(f"--end {end} is before --start {start}")
    spec = load_registry().get(symbol)
    shots, skipped = read_shots(folder, lake, symbol, start, end)
    if len(shots) < 2:
        raise CalibrationError(
            f"{symbol}: {len(shots)} readable screenshot(s) captured {start} .. {end} in {folder}; calibration "
            "needs at least 2 (earlier ones to fit, later ones to score), better several a day over a week: "
            "widen --start/--end or add captures to the folder (LIQ_SCREENSHOT_DIR)"
            + (
                f". Skipped: {skipped[0]}" + (f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else "")
                if skipped
                else ""
            )
        )
    if not any(s.price is not None for s in shots):
        raise CalibrationError(
            f"{symbol}: no klines in the lake for {start} .. {end}: materialize the raw tables for those days first "
            f"(uv run liq backfill {symbol} --start {start} --end {end})"
        )
    train, holdout = split_in_time(shots, holdout_share)
    default = ModelConfig.for_symbol(spec)
    lookbacks = sorted({int(x) for x in lookbacks if 1 <= int(x) <= MAX_LOOKBACK_DAYS})
    if not lookbacks:
        raise CalibrationError(f"lookbacks must lie in 1..{MAX_LOOKBACK_DAYS}")
    first, last = (model_day(s, default.step_minutes) for s in (shots[0], shots[-1]))
    longest = max(*lookbacks, default.lookback_days)
    replayer = Replayer(
        spec, default, _load(lake, spec, replace(default, lookback_days=longest), first, last)
    )
    best, train_scores, trials = search(
        lambda cfg: replayer.score(cfg, train), spec, default, lookbacks, positions
    )
    return CalibrationResult(
        symbol=symbol,
        start=start,
        end=end,
        params=fitted_params(best),
        default_params=fitted_params(default),
        holdout=replayer.score(best, holdout),
        default_holdout=replayer.score(default, holdout),
        train=train_scores,
        default_train=replayer.score(default, train),
        n_train=len(train),
        n_holdout=len(holdout),
        train_files=[s.file for s in train],
        holdout_files=[s.file for s in holdout],
        trials=trials,
        seconds=round(time.perf_counter() - started, 2),
        skipped=skipped,
    )


def fitted_params(config: ModelConfig) -> dict[str, Any]:
    """The calibrated fields of a config, JSON-ready."""
    return {
        "leverage": list(config.leverage),
        "leverage_weights": [round(w, 6) for w in config.leverage_weights],
        "position_usd": config.position_usd,
        "lookback_days": config.lookback_days,
    }


def window(
    folder: Path, symbol: str, start: str = "", end: str = "", days: int = WINDOW_DAYS
) -> tuple[date, date]:
    """The calibration window from run config: `end` empty = the newest capture day of `symbol` in `folder`,
    `start` empty = `days` days up to `end`."""
    if end:
        last = date.fromisoformat(end)
    else:
        captured = []
        for path in folder.glob("*.png") if folder.is_dir() else ():
            try:
                name = parse_screenshot_name(path.name)
            except ValueError:
                continue
            if name.symbol == symbol:
                captured.append(name.captured_at.date())
        if not captured:
            raise CalibrationError(
                f"{symbol}: no Coinglass screenshots of it in {folder}: put captures there (LIQ_SCREENSHOT_DIR) "
                "or give start and end in the run config"
            )
        last = max(captured)
    first = date.fromisoformat(start) if start else last - timedelta(days=days - 1)
    return first, last


# --- where the model finds the result ------------------------------------------------------------------------------


def save(lake: Lake, result: CalibrationResult) -> Path:
    """Write the result as JSON where the model looks for it (`Lake.calibration_file`), atomically."""
    path = lake.calibration_file(result.symbol)
    _write_atomic(path, [json.dumps(result.to_json(), indent=2, default=str)])
    return path


def fitted_overrides(symbol: str, lake: Lake | None = None) -> dict[str, Any]:
    """The model overrides from `symbol`'s stored calibration when it beat the defaults on its held-out screenshots
    and still matches the registry's leverages; else {} (the registry's defaults apply)."""
    path = (lake or Lake.at()).calibration_file(symbol)
    if not path.is_file():
        return {}
    try:
        stored = json.loads(path.read_text())
        params = stored["params"]
        if not beats(stored["holdout"], stored["default_holdout"]):
            return {}
    except (ValueError, KeyError, TypeError):
        return {}  # unreadable or from another version: the defaults, not a crash in every model run
    if list(params.get("leverage", [])) != list(load_registry().get(symbol).leverage):
        return {}  # the registry's leverages changed since: the mix no longer applies
    return {
        "leverage": tuple(params["leverage"]),
        "leverage_weights": tuple(params["leverage_weights"]),
        "position_usd": float(params["position_usd"]),
        "lookback_days": int(params["lookback_days"]),
    }


# --- the command ---------------------------------------------------------------------------------------------------


def format_result(result: CalibrationResult) -> str:
    """The human output of `liq calibrate`: held-out scores default vs fitted, then the fitted parameters."""
    from tabulate import tabulate

    def fmt(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}"

    names = ["hit_rate", "precision", "rank_correlation", "objective"]
    rows = [[n, fmt(result.default_holdout[n]), fmt(result.holdout[n]), fmt(result.train[n])] for n in names]
    rows.append(
        [
            "screenshots scored",
            result.default_holdout["n_scored"],
            result.holdout["n_scored"],
            result.train["n_scored"],
        ]
    )
    table = tabulate(
        rows, headers=["", "default (held out)", "fitted (held out)", "fitted (train)"], tablefmt="psql"
    )
    p, d = result.params, result.default_params
    mix = ", ".join(f"{lev}x {w:.0%}" for lev, w in zip(p["leverage"], p["leverage_weights"], strict=True))
    default_mix = ", ".join(
        f"{lev}x {w:.0%}" for lev, w in zip(d["leverage"], d["leverage_weights"], strict=True)
    )
    verdict = (
        "the fitted parameters beat the defaults on the held-out screenshots"
        if result.beats_defaults
        else "the fitted parameters do NOT beat the defaults on the held-out screenshots: the model keeps the defaults"
    )
    return "\n".join(
        [
            f"{result.symbol}: fitted on {result.n_train} screenshot(s) ({_span(result.train_files)}), scored on "
            f"the {result.n_holdout} later one(s) ({_span(result.holdout_files)})",
            table,
            f"fitted:   leverage mix {mix}; position {p['position_usd']:,.0f} USDT; lookback {p['lookback_days']} days",
            f"defaults: leverage mix {default_mix}; position {d['position_usd']:,.0f} USDT; "
            f"lookback {d['lookback_days']} days",
            f"{verdict}.",
            f"{result.trials} trials in {result.seconds:.1f} s"
            + (
                f"; {len(result.skipped)} screenshot(s) skipped: {'; '.join(result.skipped)}"
                if result.skipped
                else ""
            ),
        ]
    )


def _span(files: list[str]) -> str:
    return files[0] if len(files) == 1 else f"{files[0]} .. {files[-1]}"


def calibrate_cli(
    symbol: str,
    start: date,
    end: date,
    *,
    data_dir: str | None,
    screenshots: Path | None,
    as_json: bool,
    save_result: bool,
    lookbacks: Sequence[int] | None = None,
) -> int:
    """`liq calibrate`: print the result (a table, or one JSON object); with `save_result`, store it for the model."""
    import os
    import sys

    from liq_pipeline.sensors import screenshot_dir
    from liq_pipeline.symbols import validate_symbol

    try:
        symbol = validate_symbol(symbol).symbol
    except ValueError as exc:
        print(f"liq calibrate: {exc}", file=sys.stderr)
        return 2
    lake = Lake.at(data_dir)
    if screenshots is None:
        in_data_dir = data_dir and not os.environ.get("LIQ_SCREENSHOT_DIR")
        screenshots = lake.local / "screenshots" if in_data_dir else screenshot_dir()
    try:
        result = calibrate(
            symbol, start, end, Path(screenshots), lake, lookbacks=lookbacks or DEFAULT_LOOKBACKS
        )
    except CalibrationError as exc:
        print(f"liq calibrate: {exc}", file=sys.stderr)
        return 2
    saved = save(lake, result) if save_result else None
    if as_json:
        print(json.dumps(result.to_json(), default=str))
    else:
        print(format_result(result))
        if saved:
            print(
                f"saved to {saved}"
                + ("" if result.beats_defaults else " (the model ignores it: it does not beat the defaults)")
            )
    return 0


def with_fitted(
    symbol: str, overrides: dict[str, Any], chosen: Iterable[str], lake: Lake | None = None
) -> dict[str, Any]:
    """`ModelConfig.for_symbol` overrides with `symbol`'s fitted parameters (`fitted_overrides`) in place of the
    values the user did not choose (`chosen`: the run-config fields set to something else than their default). A
    chosen leverage or mix replaces the fitted mix as a whole."""
    chosen = set(chosen)
    fitted = fitted_overrides(symbol, lake)
    if chosen & {"leverage", "leverage_weights"}:
        fitted.pop("leverage", None)
        fitted.pop("leverage_weights", None)
    return {**overrides, **{k: v for k, v in fitted.items() if k not in chosen}}
