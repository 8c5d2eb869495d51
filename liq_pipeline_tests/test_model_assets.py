"""The whole graph, raw -> model, on generator fixtures for two symbols, through Dagster."""

import json

import numpy as np
import pyarrow.compute as pc
import pytest
from dagster import AssetKey, materialize

from liq_pipeline.assets.model import MODEL_ASSETS
from liq_pipeline.assets.raw import RAW_ASSETS
from liq_pipeline.lake import Lake
from liq_pipeline.model_io import CONFIG_KEY
from liq_pipeline.partitions import partition_key
from liq_pipeline.resources import ArchiveSource, LakeIOManager, LakeResource

from .conftest import FIXTURE_DAYS

DAY = FIXTURE_DAYS[-1]


def run_graph(data_dir, symbols, days=FIXTURE_DAYS, run_config=None):
    resources = {
        "lake_io_manager": LakeIOManager(data_dir=str(data_dir)),
        "lake": LakeResource(data_dir=str(data_dir)),
        "archive": ArchiveSource(source="local"),
    }
    results = []
    for day in days:
        for symbol in symbols:
            results.append(
                materialize(
                    [*RAW_ASSETS, *MODEL_ASSETS],
                    partition_key=partition_key(symbol, day),
                    resources=resources,
                    run_config=run_config,
                    raise_on_error=False,
                )
            )
    return results


@pytest.fixture
def local(mirror, monkeypatch):
    monkeypatch.setenv("LIQ_ARCHIVE_ROOT", str(mirror))
    return mirror


def test_two_symbols_raw_to_model_each_reads_only_its_own_symbol(local, tmp_path):
    results = run_graph(tmp_path / "both", ["BTCUSDT", "ETHUSDT"])
    assert all(r.success for r in results)
    both = Lake.at(tmp_path / "both")
    btc = both.read("liquidation_heatmap", "BTCUSDT", [DAY])
    eth = both.read("liquidation_heatmap", "ETHUSDT", [DAY])
    assert btc.num_rows > 0 and eth.num_rows > 0
    # BTC trades near 95k and ETH near 3.4k: one bin of the other symbol's data would show.
    assert pc.min(btc["price"]).as_py() > 20_000
    assert pc.max(eth["price"]).as_py() < 20_000
    # The same BTC partition built in a lake that has no ETH at all is identical.
    alone = run_graph(tmp_path / "alone", ["BTCUSDT"])
    assert all(r.success for r in alone)
    assert Lake.at(tmp_path / "alone").read("liquidation_heatmap", "BTCUSDT", [DAY]).equals(btc)

    last = results[-2]  # BTCUSDT on DAY
    checks = {e.check_name: e.passed for e in last.get_asset_check_evaluations()}
    assert checks["invariants"] and checks["not_empty_when_oi_moved"]
    meta = last.asset_materializations_for_node("liquidation_model")
    heat_meta = next(m for m in meta if m.asset_key == AssetKey("liquidation_heatmap")).metadata
    assert heat_meta["lookback days used"].value == 2  # the fixture has two days; twelve are skipped
    assert len(heat_meta["lookback days missing (skipped)"].value["klines"]) == 12
    assert "data:image/png;base64," in heat_meta["preview"].value


def test_heatmap_covers_every_step_and_records_its_config(local, tmp_path):
    config = {"ops": {"liquidation_model": {"config": {"leverage_weights": [0.5, 0.2, 0.1, 0.1, 0.1]}}}}
    assert all(r.success for r in run_graph(tmp_path, ["ETHUSDT"], run_config=config))
    lake = Lake.at(tmp_path)
    heat = lake.read("liquidation_heatmap", "ETHUSDT", [DAY])
    assert pc.count_distinct(heat["ts"]).as_py() == 288  # every 5-minute step of the day
    stored = json.loads(heat.schema.metadata[CONFIG_KEY])
    assert stored["leverage_weights"] == pytest.approx([0.5, 0.2, 0.1, 0.1, 0.1])
    levels = lake.read("liquidation_levels", "ETHUSDT", [DAY]).to_pandas()
    assert set(levels["side"]) == {"long", "short"}
    assert levels["as_of"].nunique() >= 24  # each hour and the end of the day
    longs, shorts = levels[levels.side == "long"], levels[levels.side == "short"]
    assert (longs.price_high < longs.current_price).all() and (shorts.price_low > shorts.current_price).all()


def test_missing_own_day_names_the_raw_partition(local, tmp_path):
    resources = {
        "lake_io_manager": LakeIOManager(data_dir=str(tmp_path)),
        "lake": LakeResource(data_dir=str(tmp_path)),
        "archive": ArchiveSource(source="local"),
    }
    result = materialize(
        [*MODEL_ASSETS, *RAW_ASSETS],
        selection=MODEL_ASSETS,
        partition_key=partition_key("BTCUSDT", DAY),
        resources=resources,
        raise_on_error=False,
    )
    assert not result.success
    error = result.get_step_failure_events()[0].event_specific_data.error
    text = "\n".join(e.message for e in (error, error.cause) if e)
    assert f"raw partition {DAY}|BTCUSDT of klines is not in the lake" in text
    assert not (tmp_path / "lake" / "liquidation_heatmap").exists()


@pytest.mark.parametrize("symbol", ["BTCUSDT", "ETHUSDT"])
def test_api_serves_the_pipelines_own_output(local, tmp_path, symbol):
    """The seed's contract against a lake the real raw -> model graph built from fixtures (not a synthetic lake)."""
    from fastapi.testclient import TestClient

    from liq_pipeline.api.app import create_app

    assert all(r.success for r in run_graph(tmp_path, [symbol]))
    client = TestClient(create_app(tmp_path))
    r = client.get("/liquidations/heatmap-timeseries", params={"symbol": symbol, "time_window": "48h"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["params"]["lookback_days"] == 14 and body["params"]["price_bin"] > 0
    grid = np.array(body["long"], dtype=float) + np.array(body["short"], dtype=float)
    assert grid.shape == (len(body["times"]), len(body["prices"])) and grid.sum() > 0
    klines = Lake.at(tmp_path).read("klines", symbol, list(FIXTURE_DAYS))
    lo, hi = pc.min(klines["low"]).as_py(), pc.max(klines["high"]).as_py()
    assert all(lo * 0.999 <= c <= hi * 1.001 for c in body["candles"]["close"] if c is not None)
    levels = client.get("/liquidations/levels", params={"symbol": symbol, "top": 3}).json()["levels"]
    assert {lv["side"] for lv in levels} == {"long", "short"}
    assert client.get("/symbols").status_code == 200


def test_screenshot_to_scores_and_jsonl_without_duplicates(local, tmp_path, monkeypatch):
    from datetime import UTC, datetime

    from liq_pipeline.assets.validation import VALIDATION_ASSETS
    from liq_pipeline.validation.report import comparison_jsonl
    from liq_pipeline.validation.sample_screenshots import write_sample_screenshot
    from liq_pipeline.validation.scores import read_jsonl

    shots = tmp_path / "shots"
    monkeypatch.setenv("LIQ_SCREENSHOT_DIR", str(shots))
    assert all(r.success for r in run_graph(tmp_path, ["ETHUSDT"]))
    lake = Lake.at(tmp_path)
    write_sample_screenshot(lake, shots, "ETHUSDT", datetime(2024, 12, 28, 12, tzinfo=UTC))
    resources = {
        "lake_io_manager": LakeIOManager(data_dir=str(tmp_path)),
        "lake": LakeResource(data_dir=str(tmp_path)),
        "archive": ArchiveSource(source="local"),
    }
    for _ in range(2):  # a re-run replaces, never duplicates
        result = materialize(
            [*RAW_ASSETS, *MODEL_ASSETS, *VALIDATION_ASSETS],
            selection=VALIDATION_ASSETS,
            partition_key=partition_key("ETHUSDT", DAY),
            resources=resources,
        )
        assert result.success
    levels = lake.read("coinglass_levels", "ETHUSDT", [DAY]).to_pandas()
    assert len(levels) >= 3 and list(levels["rank"][:3]) == [1, 2, 3]
    assert levels["price"].between(2500, 4500).all()
    scores = lake.read("validation_scores", "ETHUSDT", [DAY]).to_pandas()
    shot = scores[scores["kind"] == "coinglass"]
    assert len(shot) == 1 and shot["n_coinglass_levels"].iloc[0] > 0
    assert 0.0 <= shot["hit_rate"].iloc[0] <= 1.0
    records = read_jsonl(comparison_jsonl(lake))
    assert [(r["symbol"], r["captured_at"][:16]) for r in records] == [("ETHUSDT", "2024-12-28T12:00")]
    assert records[0]["hit_rate"] == pytest.approx(shot["hit_rate"].iloc[0])
    # No screenshot that day and no forced liquidations: said, not scored as 0 or 1.
    other = materialize(
        [*RAW_ASSETS, *MODEL_ASSETS, *VALIDATION_ASSETS],
        selection=VALIDATION_ASSETS,
        partition_key=partition_key("ETHUSDT", FIXTURE_DAYS[0]),
        resources=resources,
    )
    meta = other.asset_materializations_for_node("validation_scores")[0].metadata
    assert "no Coinglass screenshot for this day: no hit rate" in meta["nothing to score"].value
