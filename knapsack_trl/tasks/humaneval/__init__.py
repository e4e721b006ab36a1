"""HumanEval: :mod:`.data` (the loader and the prompt format), :mod:`.reward` (the sandboxed reward) and
:mod:`.judge` (the trusted process that runs the task's ``check``)."""
