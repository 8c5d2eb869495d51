"""The read-only HTTP API and the Coinglass-style heatmap page over the lake (`liq serve`): `app.create_app`.

Nothing is imported here, so `liq serve`'s supervisor (`server.serve`) stays small."""
