"""The graph runner: services of tasks, ordered by what they provide and require, run on agents."""
