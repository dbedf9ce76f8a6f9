"""The `prox` command line and its benchmarks, as a user runs them."""
