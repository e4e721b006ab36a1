"""The pure allocation core: numpy and ortools only, no torch, no trl."""
