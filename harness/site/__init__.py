"""The static HTML report and the nightly leaderboard page, built from harness.results."""
