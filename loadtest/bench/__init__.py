"""The benchmarks, by name: ``python -m loadtest.bench --help`` lists them (``make bench`` runs all)."""
