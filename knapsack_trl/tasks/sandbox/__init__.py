"""Run untrusted Python (model completions) confined: the runner (caller's side) and the launcher (a real
file run in a fresh interpreter). ``python -m knapsack_trl.tasks.sandbox`` reports this machine's isolation;
docs/threat_model.md says what is contained."""
