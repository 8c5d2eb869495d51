"""The symbol registry: the packaged file, and invalid files failing at load time with the file and entry named."""

from pathlib import Path

import pytest

from liq_pipeline.partitions import SYMBOLS
from liq_pipeline.symbols import PACKAGED_FILE, RegistryError, load_registry, validate_symbol

SEED_SYMBOLS = [
    "BTCUSDT",
    "ETHUSDT",
    "BNBUSDT",
    "ADAUSDT",
    "DOGEUSDT",
    "XRPUSDT",
    "SOLUSDT",
    "DOTUSDT",
    "MATICUSDT",
    "LINKUSDT",
]


def test_packaged_registry_lists_the_seed_symbols_and_drives_the_partitions():
    registry = load_registry(PACKAGED_FILE)
    assert registry.symbols == SEED_SYMBOLS
    assert SYMBOLS.get_partition_keys() == SEED_SYMBOLS
    btc = registry.get("BTCUSDT")
    assert btc.tiers[0].mmr == 0.004 and btc.tiers[0].cap == 50_000 and btc.tiers[0].cum == 0
    assert btc.tiers[1].mmr == 0.005 and btc.tiers[1].cap == 600_000 and btc.tiers[1].cum == 50
    assert btc.tier_for(49_999).mmr == 0.004 and btc.tier_for(50_000).mmr == 0.005
    assert dict(zip(btc.leverage, btc.leverage_weights)) == {5: 0.15, 10: 0.30, 25: 0.25, 50: 0.20, 100: 0.10}


def test_unknown_and_malformed_symbols_name_the_supported_list():
    with pytest.raises(ValueError, match="BTCUSDT, ETHUSDT"):
        validate_symbol("FOOUSDT", load_registry(PACKAGED_FILE))
    with pytest.raises(ValueError, match="Malformed"):
        validate_symbol("eth'; drop", load_registry(PACKAGED_FILE))


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "symbols.toml"
    path.write_text(text)
    return path


GOOD_ENTRY = """
[symbols.AVAXUSDT]
price_bin = 0.05
first_date = 2021-12-01
sample_price = 40.0
leverage = [5, 10]
leverage_weights = [0.5, 0.5]
tiers = [
  { floor = 0, cap = 5000, max_leverage = 75, mmr = 0.005, cum = 0 },
  { floor = 5000, cap = 50000, max_leverage = 50, mmr = 0.01, cum = 25 },
]
"""


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "price_bin = 0.05",
            "price_bin = 0.05\ncolour = 'red'",
            r"\[symbols.AVAXUSDT\]: unknown keys \['colour'\]",
        ),
        ("[symbols.AVAXUSDT]", "[symbols.avax-usdt]", r"\[symbols.avax-usdt\]: bad symbol name"),
        (
            "floor = 5000, cap = 50000",
            "floor = 4000, cap = 50000",
            "tier 2: floor 4000 must equal the previous cap",
        ),
        ("mmr = 0.01, cum = 25", "mmr = 0.004, cum = 25", "tier 2: tiers are unordered"),
        ("mmr = 0.01, cum = 25", "mmr = 0.01, cum = 30", r"tier 2: cum 30 breaks cum_n"),
        ("leverage_weights = [0.5, 0.5]", "leverage_weights = [0.5, 0.6]", "must be >= 0 and sum to 1"),
        ("leverage = [5, 10]", "leverage = [5, 100]", "exceeds the first tier's max 75x"),
    ],
)
def test_invalid_registry_fails_at_load_naming_file_and_entry(tmp_path, old, new, message):
    assert old in GOOD_ENTRY
    path = _write(tmp_path, GOOD_ENTRY.replace(old, new))
    with pytest.raises(RegistryError, match=message) as err:
        load_registry(path)
    assert str(path) in str(err.value)


def test_a_good_custom_file_loads(tmp_path):
    registry = load_registry(_write(tmp_path, GOOD_ENTRY))
    assert registry.symbols == ["AVAXUSDT"]
    assert registry.get("AVAXUSDT").tiers[1].cum == 25
