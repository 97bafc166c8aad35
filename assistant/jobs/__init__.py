"""Code that runs inside a run's container (or process): the agent and the recipes.

Everything here depends only on the standard library and torch (plus what a recipe's
dataset needs), never on the orchestrator's own dependencies.
"""
