"""The deploy engine: pure planner, plan as data, the executor (the only AWS writer), journal."""
