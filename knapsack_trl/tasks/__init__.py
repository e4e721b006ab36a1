"""Tasks: each one's data loader, prompt format, answer parser and reward, beside one another.

``arithmetic`` (the tiny offline world), ``gsm8k``, ``humaneval``; ``sandbox`` confines the code a policy
writes; ``registry`` names the rewards recipes can use; ``records`` reads local or hub data; ``text`` gets
the text out of a completion. Package ``__init__`` files import nothing, so the sandbox's world-readable
copy (tests/test_sandbox_users.py) needs only the standard library.
"""
