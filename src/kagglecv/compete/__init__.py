"""compete: from predictions to the leaderboard. The submission file and its record, uploads,
OOF-fitted blends, the runs table (`make runs`) and the CV-vs-LB ledger (`make lb`)."""
