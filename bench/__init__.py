"""izreg vs distribution: the benchmark (bench/run.py) and its modes."""
