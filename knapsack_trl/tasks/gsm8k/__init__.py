"""GSM8K: :mod:`.data` (the loader and the prompt format) and :mod:`.reward` (the answer parser and the
rewards)."""
