"""predict: a finished run's answers. Fold models from a run, the test set (`make submit`'s
predictions, cached in the run folder), new images (`kagglecv predict`), TTA chosen on OOF and the
post-processing fitted on OOF. Reads run folders; writes only its caches."""
