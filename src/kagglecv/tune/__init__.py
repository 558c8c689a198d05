"""tune: an Optuna search over a recipe's tune: block (`make tune`), each trial a short run, and
the page that shows the study."""
