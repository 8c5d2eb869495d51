"""Property-based fuzzing of the API from its own OpenAPI schema: whatever the inputs, never a 5xx.

Each operation of the schema is fuzzed in-process (ASGI) with positive and negative data from schemathesis'
strategies, driven by Hypothesis here (schemathesis' lazy pytest fixture loader does not work with pytest 9).
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode

from liq_pipeline.api.app import create_app
from liq_pipeline.symbols import PACKAGED_FILE
from liq_pipeline_tests.test_api import build_lake

# 30 examples per case keeps the run well under a minute; LIQ_FUZZ_EXAMPLES=400 for a deeper local run.
MAX_EXAMPLES = int(os.environ.get("LIQ_FUZZ_EXAMPLES", "30"))
OPERATIONS = ["/liquidations/heatmap-timeseries", "/liquidations/levels", "/symbols", "/health"]


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    data = tmp_path_factory.mktemp("fuzz-lake") / "data"
    build_lake(data)
    app = create_app(data, registry_file=PACKAGED_FILE)
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def test_schema_lists_every_endpoint(api_schema):
    labels = set()
    for result in api_schema.get_all_operations():
        labels.add(result.ok().path)
    assert labels == set(OPERATIONS)


CASES = [
    *[(path, GenerationMode.POSITIVE, None) for path in OPERATIONS],
    # parameterless endpoints have no negative data to generate
    *[(path, GenerationMode.NEGATIVE, None) for path in OPERATIONS[:2]],
    # a valid symbol, so the fuzzing reaches the window, time, bin, side and top handling and the lake
    *[
        (path, mode, symbol)
        for path in OPERATIONS[:2]
        for mode in GenerationMode
        for symbol in ("BTCUSDT", "ETHUSDT")
    ],
]


@pytest.mark.parametrize(
    "path, mode, symbol", CASES, ids=lambda v: v.value if isinstance(v, GenerationMode) else str(v)
)
def test_no_server_errors(api_schema, path, mode, symbol):
    operation = api_schema[path]["GET"]
    seen: list[int] = []
    strategy = operation.as_strategy(generation_mode=mode)
    if symbol:
        strategy = strategy.map(lambda case: _with_symbol(case, symbol))

    @given(case=strategy)
    @settings(
        max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )
    def fuzz(case):
        response = case.call()
        seen.append(response.status_code)
        case.validate_response(response, checks=[not_a_server_error])

    fuzz()
    assert seen and all(code < 500 for code in seen)
    if symbol and mode is GenerationMode.POSITIVE:
        assert 200 in seen  # the valid-symbol run did reach the data


# Inputs that once gave a 500 (an offset moving year 1 or 9999 out of datetime's range), replayed every run.
KNOWN_BAD = [
    {"start_time": "0001-01-01T00:00:00+01:00"},
    {"end_time": "0001-01-01T00:00:00+01:00"},
    {"start_time": "9999-12-31T23:59:59-01:00"},
    {"end_time": "9999-12-31T23:59:59-01:00"},
    {"start_time": "1999-12-31T23:00:00-02:00", "end_time": "2000-01-01T05:00:00+00:00"},
]


@pytest.mark.parametrize("query", KNOWN_BAD, ids=lambda q: ",".join(f"{k}={v}" for k, v in q.items()))
def test_known_bad_inputs_are_4xx(api_schema, query):
    case = api_schema["/liquidations/heatmap-timeseries"]["GET"].Case(query={"symbol": "BTCUSDT", **query})
    response = case.call()
    case.validate_response(response, checks=[not_a_server_error])
    assert 400 <= response.status_code < 500, response.text


def _with_symbol(case, symbol):
    case.query = {**(case.query or {}), "symbol": symbol}
    return case
