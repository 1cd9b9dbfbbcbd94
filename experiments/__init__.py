"""Studies built on the library (`python -m experiments.<study>.<script>` from the repository
root); `experiments.stats` holds the statistics they share."""
