"""Model parameters: one frozen, validated `ModelConfig` per run, resolved against a symbol's registry entry.

Defaults and where they come from:

- ``leverage`` / ``leverage_weights``: the registry's mix for the symbol (5/10/25/50/100x = 15/30/25/20/10 % for the
  majors, the old system's mix). Weights must be >= 0 with a positive sum; they are normalised to sum to 1.
- ``lookback_days = 14``: a partition for day D replays D-13 .. D, and a position's weight in the map falls linearly
  with its age to zero at 14 days (the engine's age weight). Two weeks is long enough for the bulk of leveraged
  perpetual positions (funding makes holding them for longer expensive) and matches the peers' default windows.
  The engine replays whatever steps it is given; the asset uses this to pick the window it reads.
- ``position_usd = 10_000``: the representative position notional that picks the maintenance-margin tier. Binance's
  retail flow is dominated by positions of a few thousand to a few tens of thousands of USDT, so 10k sits in the
  middle of it. For the majors (tier 1 up to 50k, cum 0) the liquidation price does not depend on the size at all
  within that range; for the alts it lands in tier 2 (MMR 1 %, cum 25: an effective MMR of 0.75 %). Changing it only
  moves liquidation prices by the MMR difference between tiers (tenths of a percent).
- ``price_bin``: the registry's grid step for the symbol.
- ``imbalance_tilt = 0.0``: off. With tilt k > 0, a step whose taker flow is imbalanced by
  ``imb = (buy - sell) / (buy + sell)`` multiplies each leverage's weight by ``exp(k * imb * z)`` for longs and
  ``exp(-k * imb * z)`` for shorts (``z`` = standardised log-leverage), then renormalises: aggressive buying puts more
  of the new longs on high leverage, aggressive selling more of the new shorts.
- ``step_minutes = 5``: the open-interest resolution of the Binance metrics files. The engine checks that the step
  start times lie on this grid.

Overriding ``leverage_weights`` alone keeps the registry's leverages; overriding ``leverage`` needs the weights too.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from liq_pipeline.symbols import SymbolSpec

DEFAULT_LOOKBACK_DAYS = 14
MAX_LOOKBACK_DAYS = 30  # the most a run may replay: the model asset's partition mapping reaches this far back
DEFAULT_POSITION_USD = 10_000.0
DEFAULT_STEP_MINUTES = 5


@dataclass(frozen=True)
class ModelConfig:
    """Parameters of one model run. Build it with `ModelConfig.for_symbol(spec, **overrides)`, which fills the
    symbol-dependent defaults (leverage mix, price bin) from the registry and validates everything.

    A directly constructed config may leave ``leverage``/``leverage_weights``/``price_bin`` empty/None; the engine
    resolves it against the spec it runs on.
    """

    leverage: tuple[int, ...] = ()
    leverage_weights: tuple[float, ...] = ()
    lookback_days: int = DEFAULT_LOOKBACK_DAYS
    position_usd: float = DEFAULT_POSITION_USD
    price_bin: float | None = None
    imbalance_tilt: float = 0.0
    step_minutes: int = DEFAULT_STEP_MINUTES

    def __post_init__(self) -> None:
        leverage = tuple(self.leverage)
        weights = tuple(float(w) for w in self.leverage_weights)
        if leverage or weights:
            if len(leverage) != len(weights) or not leverage:
                raise ValueError(
                    f"leverage and leverage_weights must be non-empty and of equal length, "
                    f"got {len(leverage)} leverages and {len(weights)} weights"
                )
            for lev in leverage:
                if isinstance(lev, bool) or not isinstance(lev, int) or lev < 2:
                    # 1x puts a long's liquidation price at or below zero: such a position is never liquidated
                    raise ValueError(f"leverage must be whole numbers >= 2, got {leverage}")
            if len(set(leverage)) != len(leverage):
                raise ValueError(f"leverage must not repeat a value, got {leverage}")
            if any(not math.isfinite(w) or w < 0 for w in weights):
                raise ValueError(f"leverage_weights must be finite and >= 0, got {weights}")
            total = math.fsum(weights)
            if total <= 0:
                raise ValueError(f"leverage_weights must have a positive sum, got {weights}")
            weights = tuple(w / total for w in weights)
        object.__setattr__(self, "leverage", leverage)
        object.__setattr__(self, "leverage_weights", weights)

        if (
            isinstance(self.lookback_days, bool)
            or not isinstance(self.lookback_days, int)
            or self.lookback_days < 1
        ):
            raise ValueError(f"lookback_days must be a whole number >= 1, got {self.lookback_days!r}")
        if not _positive(self.position_usd):
            raise ValueError(f"position_usd must be a positive number of USDT, got {self.position_usd!r}")
        object.__setattr__(self, "position_usd", float(self.position_usd))
        if self.price_bin is not None:
            if not _positive(self.price_bin):
                raise ValueError(f"price_bin must be a positive price step, got {self.price_bin!r}")
            object.__setattr__(self, "price_bin", float(self.price_bin))
        if not isinstance(self.imbalance_tilt, int | float) or not math.isfinite(self.imbalance_tilt):
            raise ValueError(f"imbalance_tilt must be a finite number (0 = off), got {self.imbalance_tilt!r}")
        if self.imbalance_tilt < 0:
            raise ValueError(f"imbalance_tilt must be >= 0 (0 = off), got {self.imbalance_tilt!r}")
        object.__setattr__(self, "imbalance_tilt", float(self.imbalance_tilt))
        step = self.step_minutes
        if isinstance(step, bool) or not isinstance(step, int) or step < 1 or 1440 % step:
            raise ValueError(
                f"step_minutes must be a whole number of minutes dividing a day (1, 5, 15, ...), got {step!r}"
            )

    @classmethod
    def for_symbol(cls, spec: SymbolSpec, **overrides: Any) -> ModelConfig:
        """The config for a symbol: registry defaults, then ``overrides`` (any field name), then validation.

        Also checks the leverage mix against the maintenance-margin tier of ``position_usd``: Binance does not allow
        more leverage than the tier's maximum.
        """
        unknown = set(overrides) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(
                f"unknown model parameters {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}"
            )
        overrides = {k: v for k, v in overrides.items() if v is not None or k == "price_bin"}
        if "leverage" in overrides and "leverage_weights" not in overrides:
            raise ValueError("leverage overridden without leverage_weights: give both so the mix is explicit")
        if "leverage_weights" in overrides and "leverage" not in overrides:
            overrides["leverage"] = tuple(spec.leverage)  # a new mix over the registry's leverages
        if "leverage" in overrides:
            overrides["leverage"] = tuple(overrides["leverage"])
        if "leverage_weights" in overrides:
            overrides["leverage_weights"] = tuple(overrides["leverage_weights"])
        return cls(**overrides).resolve(spec)

    def resolve(self, spec: SymbolSpec) -> ModelConfig:
        """Fill what is left open from the symbol's registry entry, and check the mix against its margin tiers."""
        cfg = self
        if not cfg.leverage:
            cfg = replace(cfg, leverage=tuple(spec.leverage), leverage_weights=tuple(spec.leverage_weights))
        if cfg.price_bin is None:
            cfg = replace(cfg, price_bin=float(spec.price_bin))
        tier = spec.tier_for(cfg.position_usd)
        if max(cfg.leverage) > tier.max_leverage:
            raise ValueError(
                f"{spec.symbol}: leverage {max(cfg.leverage)}x exceeds {tier.max_leverage}x, the maximum for a "
                f"{cfg.position_usd:,.0f} USDT position (tier {tier.floor:,.0f}-{tier.cap:,.0f}); "
                "lower the leverage or position_usd"
            )
        return cfg

    @property
    def is_resolved(self) -> bool:
        return bool(self.leverage) and self.price_bin is not None

    @property
    def step_ns(self) -> int:
        return self.step_minutes * 60 * 1_000_000_000

    @property
    def steps_per_day(self) -> int:
        return 1440 // self.step_minutes

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (tuples become lists)."""
        out = asdict(self)
        out["leverage"] = list(self.leverage)
        out["leverage_weights"] = list(self.leverage_weights)
        return out


def _positive(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and x > 0
