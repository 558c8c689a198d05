"""prepare: raw files -> the prepared shape (`make data`). Sources (Kaggle, built-ins, a folder,
the web) fill data/<comp>/raw/; layout writes train/, test/, folds.csv, holdout and prepared.json;
verify decodes every image once; inspect and draft read what was prepared. Imports only core."""
