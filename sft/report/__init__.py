"""Reports over many runs: job records read back, ranked tables, summaries, plots."""
