"""Reward functions for TRL trainers (GSM8K, HumanEval) and the sandbox that runs generated code."""
