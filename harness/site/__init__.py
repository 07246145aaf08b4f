"""The static HTML report and the nightly leaderboard page, built from harness.results.

columns (what the report shows of a row), tables and figures (its view models and plotly
dicts), prepare (store -> task sections), build (render and write: `write_report`), trend (the
leaderboard page: `write_leaderboard`; its history is harness.results.history), page_text."""
