"""bench: throughput (`make bench`: model alone, data alone, full training) and the comparison
with fastai (`kagglecv bench --fastai`)."""
