"""train: a k-fold run (`make train`). The run around the folds, one fold's loop, fold claims
between trainers, GPUS=N launches, the LR range test, the batch-size memory guard and
pseudo-labels. Writes runs/<comp>/<run>/; final once its folds are done."""
